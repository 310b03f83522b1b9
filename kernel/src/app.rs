//! Runs the app: decodes the bundle, merges the run configuration, links WASI into wasmi and
//! calls `_start`, and turns however that ends into an [`ExitRecord`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use wasmi::{Engine, Error, Linker, Module, Store, TrapCode};
use wasmvm_abi::bundle::{BundleRef, Manifest, RunConfig};
use wasmvm_abi::channel::{ExitKind, ExitRecord, trap};
use wasmvm_wasi::{Wasi, link};

use crate::platform::KernelPlatform;

/// Everything the app needs to start, merged from the bundle and the run configuration.
pub struct Launch {
    pub module: &'static [u8],
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub seed: Option<[u8; 32]>,
}

impl Launch {
    pub fn new(bundle: BundleRef<'static>, run: Option<RunConfig>) -> Result<Self, String> {
        let manifest =
            Manifest::decode(bundle.manifest).map_err(|e| format!("bundle manifest: {e}"))?;
        let run = run.unwrap_or_default();
        let argv0 = run.argv0.or(manifest.argv0).unwrap_or(manifest.module_name);
        let mut args = Vec::from([argv0]);
        args.extend(run.args.unwrap_or(manifest.args));
        let mut env = manifest.env;
        for var in run.env {
            let key = var.split(|&b| b == b'=').next().unwrap_or(&[]);
            env.retain(|old| old.split(|&b| b == b'=').next() != Some(key));
            env.push(var);
        }
        Ok(Launch {
            module: bundle.module,
            args,
            env,
            seed: run.random_seed,
        })
    }
}

/// Runs the app to completion.
pub fn run(launch: Launch) -> ExitRecord {
    let started = crate::clock::monotonic_ns();
    let engine = Engine::new(&link::engine_config());
    let module = match Module::new(&engine, launch.module) {
        Ok(m) => m,
        Err(e) => return ExitRecord::failed(ExitKind::BootFailed, format!("invalid module: {e}")),
    };
    let platform = KernelPlatform::new(launch.seed);
    let mut store = Store::new(&engine, Wasi::new(platform, launch.args, launch.env));
    let mut linker = Linker::new(&engine);
    if let Err(e) = link::add_to_linker(&mut linker) {
        return ExitRecord::failed(ExitKind::BootFailed, format!("linking WASI: {e}"));
    }
    let instance = match linker.instantiate_and_start(&mut store, &module) {
        Ok(i) => i,
        Err(e) => return outcome(e),
    };
    let start = match instance.get_typed_func::<(), ()>(&store, "_start") {
        Ok(f) => f,
        Err(e) => {
            return ExitRecord::failed(ExitKind::BootFailed, format!("no usable `_start`: {e}"));
        }
    };
    crate::channel::log(&format!(
        "kernel: module compiled and instantiated in {} us; calling _start",
        (crate::clock::monotonic_ns() - started) / 1000
    ));
    match start.call(&mut store, ()) {
        Ok(()) => ExitRecord::exited(0),
        Err(e) => outcome(e),
    }
}

/// Classifies how a call into the module failed.
fn outcome(e: Error) -> ExitRecord {
    if let Some(status) = e.i32_exit_status() {
        return ExitRecord::exited(status);
    }
    let (code, message) = match e.as_trap_code() {
        Some(code) => {
            let ours = trap_code(code);
            (ours, String::from(trap::message(ours)))
        }
        None => (trap::HOST_ERROR, format!("{e}")),
    };
    let mut record = ExitRecord::failed(ExitKind::Trapped, message);
    record.trap_code = Some(code);
    record
}

fn trap_code(code: TrapCode) -> u32 {
    match code {
        TrapCode::UnreachableCodeReached => trap::UNREACHABLE,
        TrapCode::MemoryOutOfBounds => trap::MEMORY_OUT_OF_BOUNDS,
        TrapCode::TableOutOfBounds => trap::TABLE_OUT_OF_BOUNDS,
        TrapCode::IndirectCallToNull => trap::INDIRECT_CALL_TO_NULL,
        TrapCode::IntegerDivisionByZero => trap::INTEGER_DIVISION_BY_ZERO,
        TrapCode::IntegerOverflow => trap::INTEGER_OVERFLOW,
        TrapCode::BadConversionToInteger => trap::BAD_CONVERSION_TO_INTEGER,
        TrapCode::StackOverflow => trap::STACK_OVERFLOW,
        TrapCode::BadSignature => trap::BAD_SIGNATURE,
        TrapCode::OutOfFuel => trap::OUT_OF_FUEL,
        TrapCode::GrowthOperationLimited => trap::GROWTH_OPERATION_LIMITED,
        TrapCode::OutOfSystemMemory => trap::OUT_OF_SYSTEM_MEMORY,
        #[allow(unreachable_patterns)]
        _ => trap::HOST_ERROR,
    }
}
