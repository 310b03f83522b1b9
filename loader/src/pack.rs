//! `wasmvm pack`: check a module, then write it with its options into an image.

use thiserror::Error;
use wasmvm_abi::bundle::Manifest;

use crate::image::{self, ImageError};
use crate::module;

/// What the user asked `pack` to record.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// The module's file name (the default argv[0]).
    pub module_name: Vec<u8>,
    pub argv0: Option<Vec<u8>>,
    pub args: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries.
    pub env: Vec<Vec<u8>>,
}

#[derive(Debug, Error)]
pub enum PackError {
    #[error("the module cannot run in wasmvm:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Module(Vec<String>),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Checks `wasm` and packs it with `kernel` into image bytes.
pub fn pack_module(kernel: &[u8], wasm: &[u8], opts: &PackOptions) -> Result<Vec<u8>, PackError> {
    let info = module::check(wasm).map_err(PackError::Module)?;
    let manifest = Manifest {
        module_name: opts.module_name.clone(),
        argv0: opts.argv0.clone(),
        args: opts.args.clone(),
        env: opts.env.clone(),
        min_memory: info.min_memory,
    };
    Ok(image::pack(kernel, wasm, &manifest)?)
}

/// Checks that `KEY=VALUE` has a non-empty key without `=` or NUL.
pub fn check_env(var: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(var);
    match var.iter().position(|&b| b == b'=') {
        Some(0) | None => Err(format!("`{shown}` is not of the form KEY=VALUE")),
        Some(_) if var.contains(&0) => Err(format!("`{shown}` contains a NUL byte")),
        Some(_) => Ok(()),
    }
}
