//! Glue between [`Wasi`] and the wasmi interpreter: the engine configuration every wasmvm
//! component uses, and one function that links all of `wasi_snapshot_preview1`.

use alloc::vec::Vec;

use wasmi::{
    Caller, Config, Error, Extern, ExternType, FuncType, Instance, Linker, Module, Store, Val,
};

use crate::{FUNCTIONS, MODULE, Platform, Sig, ValType, Wasi};

/// Every wasm proposal wasmi supports, as `pack` checks and the kernel runs modules.
pub fn engine_config() -> Config {
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
    config
}

pub fn val_type(t: ValType) -> wasmi::ValType {
    match t {
        ValType::I32 => wasmi::ValType::I32,
        ValType::I64 => wasmi::ValType::I64,
    }
}

/// The wasmi function type of a WASI function.
pub fn func_type(sig: &Sig) -> FuncType {
    FuncType::new(
        sig.params.iter().copied().map(val_type),
        sig.results.iter().copied().map(val_type),
    )
}

/// A store's data that holds a WASI world.
pub trait WasiView: 'static {
    type Platform: Platform;
    fn wasi(&mut self) -> &mut Wasi<Self::Platform>;
}

/// Defines in `linker` every `wasi_snapshot_preview1` function `module` imports, each in
/// the shape its import names (two socket calls exist in two shapes, see `signature.rs`).
/// `proc_exit` becomes wasmi's `i32_exit` error; everything else returns an errno. Imports
/// WASI does not have are left undefined (instantiation names them, or `add_stubs`).
pub fn add_to_linker<T: WasiView>(linker: &mut Linker<T>, module: &Module) -> Result<(), Error> {
    // A module may import one function twice (AssemblyScript does); define it once.
    let mut defined: Vec<crate::Func> = Vec::new();
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        if import.module() != MODULE {
            continue;
        }
        let Some(sig) = FUNCTIONS
            .iter()
            .find(|s| s.name == import.name() && func_type(s) == *ty)
        else {
            continue;
        };
        if defined.contains(&sig.func) {
            continue;
        }
        defined.push(sig.func);
        define(linker, sig)?;
    }
    Ok(())
}

fn define<T: WasiView>(linker: &mut Linker<T>, sig: &Sig) -> Result<(), Error> {
    let func = sig.func;
    linker.func_new(
        MODULE,
        sig.name,
        func_type(sig),
        move |mut caller: Caller<'_, T>, params: &[Val], results: &mut [Val]| {
            let args: Vec<u64> = params
                .iter()
                .map(|v| match v {
                    Val::I32(x) => *x as u32 as u64,
                    Val::I64(x) => *x as u64,
                    _ => 0,
                })
                .collect();
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                return Err(Error::new("the module exports no memory named `memory`"));
            };
            let (bytes, state) = memory.data_and_store_mut(&mut caller);
            match state.wasi().call(func, bytes, &args) {
                Ok(errno) => {
                    if let Some(slot) = results.first_mut() {
                        *slot = Val::I32(errno.raw() as i32);
                    }
                    Ok(())
                }
                Err(exit) => Err(Error::i32_exit(exit.0 as i32)),
            }
        },
    )?;
    Ok(())
}

impl<P: Platform + 'static> WasiView for Wasi<P> {
    type Platform = P;
    fn wasi(&mut self) -> &mut Wasi<P> {
        self
    }
}

/// Links every function import of `module` that WASI does not provide as a stub returning
/// zero values (wasmtime's `--default-values-unknown-imports`).
pub fn add_stubs<T: 'static>(linker: &mut Linker<T>, module: &Module) -> Result<(), Error> {
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let provided = import.module() == MODULE
            && FUNCTIONS
                .iter()
                .any(|s| s.name == import.name() && func_type(s) == *ty);
        if provided {
            continue;
        }
        let results: Vec<wasmi::ValType> = ty.results().to_vec();
        linker.func_new(
            import.module(),
            import.name(),
            ty.clone(),
            move |_, _, out| {
                for (slot, t) in out.iter_mut().zip(&results) {
                    *slot = Val::default_for_ty(*t);
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// Runs the app's entry point: `_start`, or for a reactor `_initialize` (if exported) and
/// then `invoke`. Returns the exit status an i32 result gives, if any.
pub fn call_entry<T>(
    store: &mut Store<T>,
    instance: &Instance,
    invoke: Option<&str>,
) -> Result<Option<i32>, Error> {
    let Some(export) = invoke else {
        let start = instance.get_typed_func::<(), ()>(&*store, "_start")?;
        start.call(&mut *store, ())?;
        return Ok(None);
    };
    if let Ok(init) = instance.get_typed_func::<(), ()>(&*store, "_initialize") {
        init.call(&mut *store, ())?;
    }
    let func = instance
        .get_func(&*store, export)
        .ok_or_else(|| Error::new(alloc::format!("no exported function `{export}`")))?;
    let mut results: Vec<Val> = func
        .ty(&*store)
        .results()
        .iter()
        .map(|t| Val::default_for_ty(*t))
        .collect();
    func.call(&mut *store, &[], &mut results)?;
    Ok(match results.first() {
        Some(Val::I32(status)) => Some(*status),
        _ => None,
    })
}
