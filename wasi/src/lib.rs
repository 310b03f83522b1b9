//! WASI preview1 (`wasi_snapshot_preview1`) for the wasmvm guest, written once over the
//! [`Platform`] trait so that the same code runs in the kernel and in host unit tests.
//!
//! `no_std` + `alloc` and free of `unsafe`: guest memory is a plain `&mut [u8]` and every
//! pointer and length the guest passes goes through [`memory::GuestMemory`], which turns
//! anything out of bounds into `EFAULT`. A call returns a WASI errno, or [`Exit`] when the app
//! calls `proc_exit`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod errno;
mod files;
mod filetype;
pub mod fs;
#[cfg(feature = "wasmi")]
pub mod link;
pub mod memory;
mod net;
mod p9;
pub mod platform;
mod poll;
mod share;
mod sockets;
mod state;

pub use errno::Errno;
pub use memory::GuestMemory;
pub use net::Nic;
pub use platform::{Clock, Platform, Stdio};
pub use state::Wasi;
// The import table is the host/guest contract's; re-exported as this crate's own API.
pub use wasmvm_abi::wasi_imports::{FUNCTIONS, Func, MODULE, Sig, ValType};

/// The app called `proc_exit` with this status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub u32);
