//! The engine configurations the packer (`wasmvm pack`, host reference mode) and the guest
//! kernel share, so that what `pack` accepts is exactly what the kernel runs:
//!
//! - [`interpreter`] (feature `wasmi`): the wasmi interpreter's configuration and the glue
//!   around it that is not WASI itself. Linking WASI proper needs the guest's WASI state,
//!   so it stays in `wasmvm-wasi`.
//! - [`compiled`] (features `wasmtime-runtime` for the kernel, `wasmtime-compiler` for the
//!   packer): wasmtime's configuration, every setting explicit, for code Cranelift compiles
//!   when the image is packed and the kernel runs natively.
//! - [`linear_memory`]: the rewrite that lets the interpreter's linear memory grow in place.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(any(feature = "wasmtime-runtime", feature = "wasmtime-compiler"))]
pub mod compiled;
#[cfg(feature = "wasmi")]
pub mod interpreter;
pub mod linear_memory;

#[cfg(feature = "wasmi")]
pub use interpreter::*;
