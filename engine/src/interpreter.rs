//! The interpreted engine: wasmi's configuration (every proposal wasmi supports, as `pack`
//! checks and the kernel runs modules), the wasmi type of an import-table entry, stubs for
//! imports WASI does not provide, and the call of the app's entry point.

use alloc::vec::Vec;

use wasmi::{Config, Error, ExternType, FuncType, Instance, Linker, Module, Store, Val};
use wasmvm_abi::wasi_imports::{FUNCTIONS, MODULE, Sig, ValType};

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

/// The wasmi type of a value type of the import table.
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

/// Links every function import of `module` that WASI does not provide as a stub returning
/// zero values (wasmtime's `--default-values-unknown-imports`).
pub fn add_stubs<T: 'static>(linker: &mut Linker<T>, module: &Module) -> Result<(), Error> {
    // A module may import one function twice; define its stub once.
    let mut stubbed: Vec<(&str, &str)> = Vec::new();
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        if stubbed.contains(&(import.module(), import.name())) {
            continue;
        }
        let provided = import.module() == MODULE
            && FUNCTIONS
                .iter()
                .any(|s| s.name == import.name() && func_type(s) == *ty);
        if provided {
            continue;
        }
        stubbed.push((import.module(), import.name()));
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
    // The reactor ABI: `_initialize` runs exactly once per instance, also when it is itself
    // the invoked export.
    if export != "_initialize"
        && let Ok(init) = instance.get_typed_func::<(), ()>(&*store, "_initialize")
    {
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

#[cfg(test)]
mod tests {
    use wasmi::Engine;
    use wasmvm_abi::wasi_imports::Func;

    use super::*;

    /// A store and a linker with only [`add_stubs`] applied to the module `wat`.
    fn stubbed(wat: &str) -> (Store<()>, Linker<()>, Module) {
        let engine = Engine::new(&engine_config());
        let module = Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut linker = Linker::new(&engine);
        add_stubs(&mut linker, &module).unwrap();
        (Store::new(&engine, ()), linker, module)
    }

    #[test]
    fn func_types_follow_the_table() {
        use wasmi::ValType::{I32, I64};
        assert_eq!(
            func_type(Func::ClockTimeGet.sig()),
            FuncType::new([I32, I64, I32], [I32])
        );
        assert_eq!(func_type(Func::ProcExit.sig()), FuncType::new([I32], []));
    }

    #[test]
    fn stubs_cover_only_imports_wasi_does_not_provide() {
        // A WASI function in its own shape is left for WASI to link: no stub, so linking
        // stubs alone leaves it undefined.
        let (mut store, linker, module) = stubbed(
            r#"(module (import "wasi_snapshot_preview1" "fd_write"
                 (func (param i32 i32 i32 i32) (result i32))))"#,
        );
        assert!(linker.instantiate_and_start(&mut store, &module).is_err());
        // Unknown modules, and a WASI name in a shape WASI does not have, are stubbed.
        let (mut store, linker, module) = stubbed(
            r#"(module
                 (import "env" "answer" (func (result i64)))
                 (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32))))"#,
        );
        assert!(linker.instantiate_and_start(&mut store, &module).is_ok());
    }

    #[test]
    fn entry_points() {
        let (mut store, linker, module) = stubbed(
            r#"(module
                 (import "env" "zero" (func $zero (result i32)))
                 (global $g (mut i32) (i32.const 0))
                 (func (export "_initialize") (global.set $g (i32.const 35)))
                 (func (export "run") (result i32) (i32.add (global.get $g) (call $zero)))
                 (func (export "_start")))"#,
        );
        let instance = linker.instantiate_and_start(&mut store, &module).unwrap();
        // A command's `_start` gives no status.
        assert_eq!(call_entry(&mut store, &instance, None).unwrap(), None);
        // A reactor's `_initialize` runs first; an i32 result is the status.
        assert_eq!(
            call_entry(&mut store, &instance, Some("run")).unwrap(),
            Some(35)
        );
        assert!(call_entry(&mut store, &instance, Some("nope")).is_err());
    }
}
