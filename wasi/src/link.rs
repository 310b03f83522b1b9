//! Glue between [`Wasi`] and the wasmi interpreter: the engine configuration every wasmvm
//! component uses, and one function that links all of `wasi_snapshot_preview1`.

use alloc::vec::Vec;

use wasmi::{Caller, Config, Error, Extern, FuncType, Linker, Val};

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

/// Defines every `wasi_snapshot_preview1` function in `linker`. `proc_exit` becomes
/// wasmi's `i32_exit` error; everything else returns an errno.
pub fn add_to_linker<T: WasiView>(linker: &mut Linker<T>) -> Result<(), Error> {
    for sig in FUNCTIONS {
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
    }
    Ok(())
}

impl<P: Platform + 'static> WasiView for Wasi<P> {
    type Platform = P;
    fn wasi(&mut self) -> &mut Wasi<P> {
        self
    }
}
