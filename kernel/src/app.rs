//! Runs the app: decodes the bundle, merges the run configuration, links WASI into wasmi and
//! calls `_start`, and turns however that ends into an [`ExitRecord`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use wasmi::{
    Config, Engine, Error, Extern, FuncType, Linker, Memory, Module, Store, TrapCode, Val,
};
use wasmvm_abi::bundle::{BundleRef, Manifest, RunConfig};
use wasmvm_abi::channel::{ExitKind, ExitRecord, trap};
use wasmvm_wasi::{FUNCTIONS, MODULE, Wasi};

use crate::platform::KernelPlatform;

struct HostState {
    wasi: Wasi<KernelPlatform>,
    memory: Option<Memory>,
}

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

fn engine() -> Engine {
    let mut config = Config::default();
    config
        .wasm_mutable_global(true)
        .wasm_sign_extension(true)
        .wasm_saturating_float_to_int(true)
        .wasm_multi_value(true)
        .wasm_multi_memory(true)
        .wasm_bulk_memory(true)
        .wasm_reference_types(true)
        .wasm_tail_call(true)
        .wasm_extended_const(true)
        .wasm_simd(true);
    Engine::new(&config)
}

fn val_type(t: wasmvm_wasi::ValType) -> wasmi::ValType {
    match t {
        wasmvm_wasi::ValType::I32 => wasmi::ValType::I32,
        wasmvm_wasi::ValType::I64 => wasmi::ValType::I64,
    }
}

fn link_wasi(linker: &mut Linker<HostState>) -> Result<(), Error> {
    for sig in FUNCTIONS {
        let ty = FuncType::new(
            sig.params.iter().copied().map(val_type),
            sig.results.iter().copied().map(val_type),
        );
        let func = sig.func;
        linker.func_new(MODULE, sig.name, ty, move |mut caller, params, results| {
            let mut args = [0u64; 9];
            for (slot, v) in args.iter_mut().zip(params) {
                *slot = match v {
                    Val::I32(x) => *x as u32 as u64,
                    Val::I64(x) => *x as u64,
                    _ => 0,
                };
            }
            let memory = match caller.data().memory {
                Some(m) => m,
                None => match caller.get_export("memory") {
                    Some(Extern::Memory(m)) => m,
                    _ => return Err(Error::new("the module exports no memory named `memory`")),
                },
            };
            let (bytes, state) = memory.data_and_store_mut(&mut caller);
            match state.wasi.call(func, bytes, &args[..params.len()]) {
                Ok(errno) => {
                    if let Some(slot) = results.first_mut() {
                        *slot = Val::I32(errno.raw() as i32);
                    }
                    Ok(())
                }
                Err(exit) => Err(Error::i32_exit(exit.0 as i32)),
            }
        })?;
    }
    Ok(())
}

/// Runs the app to completion.
pub fn run(launch: Launch) -> ExitRecord {
    let engine = engine();
    let module = match Module::new(&engine, launch.module) {
        Ok(m) => m,
        Err(e) => return ExitRecord::failed(ExitKind::BootFailed, format!("invalid module: {e}")),
    };
    let platform = KernelPlatform::new(launch.seed);
    let state = HostState {
        wasi: Wasi::new(platform, launch.args, launch.env),
        memory: None,
    };
    let mut store = Store::new(&engine, state);
    let mut linker = Linker::new(&engine);
    if let Err(e) = link_wasi(&mut linker) {
        return ExitRecord::failed(ExitKind::BootFailed, format!("linking WASI: {e}"));
    }
    let instance = match linker.instantiate_and_start(&mut store, &module) {
        Ok(i) => i,
        Err(e) => return outcome(e),
    };
    store.data_mut().memory = instance.get_memory(&store, "memory");
    let start = match instance.get_typed_func::<(), ()>(&store, "_start") {
        Ok(f) => f,
        Err(e) => {
            return ExitRecord::failed(ExitKind::BootFailed, format!("no usable `_start`: {e}"));
        }
    };
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
