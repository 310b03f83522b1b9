//! Links [`Wasi`] into the wasmi interpreter: one function that defines every
//! `wasi_snapshot_preview1` function a module imports. The engine configuration and the
//! wasmi glue that is not WASI (stubs, entry points) are `wasmvm_engine`'s.

use alloc::vec::Vec;

use wasmi::{Caller, Error, Extern, ExternType, Linker, Module, Val};
use wasmvm_engine::func_type;

use crate::{FUNCTIONS, MODULE, Platform, Sig, Wasi};

/// A store's data that holds a WASI world.
pub trait WasiView: 'static {
    type Platform: Platform;
    fn wasi(&mut self) -> &mut Wasi<Self::Platform>;
}

/// Defines in `linker` every `wasi_snapshot_preview1` function `module` imports, each in
/// the shape its import names (two socket calls exist in two shapes, see
/// `wasmvm_abi::wasi_imports`). `proc_exit` becomes wasmi's `i32_exit` error; everything
/// else returns an errno. Imports WASI does not have are left undefined (instantiation names
/// them, or `wasmvm_engine::add_stubs` stubs them).
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
