//! Empty stand-in for the `memfd` crate in the guest kernel's build: wasmtime's `runtime`
//! feature pulls memfd on Linux targets, and memfd's rustix would link libstd into the
//! `no_std` kernel. wasmtime without `std` uses its custom platform and never calls memfd.
#![no_std]
