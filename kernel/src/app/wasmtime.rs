//! The compiled engine: wasmtime's runtime (no compiler) runs the artifact Cranelift
//! compiled when the image was packed, natively, in place in the bundle.
//!
//! The configuration is `wasmvm_engine::compiled::config()`, the packer's own, so the
//! artifact loads; `embedding` adds what the runtime needs from this kernel (code memory,
//! thread-local slots) and holds this engine's only `unsafe`. WASI is the same
//! [`Wasi::call`] the interpreter reaches, linked here through wasmtime's `Linker`, and
//! every ending maps to the record the interpreter gives for it.
//!
//! With signals off, compiled code checks the stack pointer at each function entry against
//! its entry value minus `MAX_WASM_STACK`, and every trap is a call into the runtime, never
//! a CPU exception: the kernel's stack holds that much plus slack (`arch::boot::STACK_SIZE`).

mod embedding;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use wasmtime::{
    Caller, Error, Extern, ExternType, FuncType, Instance, Linker, Module, Store, Tag,
    ThrownException, Trap, Val, ValType, WasmBacktrace,
};
use wasmvm_abi::channel::{ExitKind, ExitRecord, trap};
use wasmvm_wasi::{FUNCTIONS, MODULE, Sig, Wasi};

use super::{LINGER_NS, Launch};
use crate::platform::KernelPlatform;

/// The store's data: the app's WASI world.
type World = Wasi<KernelPlatform>;

/// Runs the app to completion.
pub fn run(mut launch: Launch) -> ExitRecord {
    let started = crate::clock::monotonic_ns();
    let Some(artifact) = launch.artifact else {
        return boot_failed(String::from("the bundle holds no compiled artifact"));
    };
    let engine = match embedding::engine() {
        Ok(e) => e,
        Err(e) => return boot_failed(format!("wasmtime engine: {}", message(&e))),
    };
    let module = match embedding::load(&engine, artifact) {
        Ok(m) => m,
        Err(e) => return boot_failed(format!("compiled artifact: {e}")),
    };
    embedding::place_app_memory(&module);
    let loaded = crate::clock::monotonic_ns();
    let wasi = match super::world(&mut launch) {
        Ok(w) => w,
        Err(e) => return boot_failed(e),
    };
    let mut store = Store::new(&engine, wasi);
    let mut linker = Linker::new(&engine);
    if let Err(e) = link(&mut linker, &module, launch.stub_imports) {
        return boot_failed(format!("linking WASI: {}", message(&e)));
    }
    let instance = match linker.instantiate(&mut store, &module) {
        Ok(i) => i,
        Err(e) => match embedding::memory_refused() {
            Some((needed, room)) => return super::no_room_for_memory(needed, room),
            None => return outcome(&mut store, None, e),
        },
    };
    let invoke = launch.invoke.as_deref();
    super::log_ready(started, loaded, "artifact loaded", invoke);
    let record = match call_entry(&mut store, &instance, invoke) {
        Ok(status) => ExitRecord::exited(status.unwrap_or(0)),
        Err(e) => outcome(&mut store, Some(&instance), e),
    };
    store.data_mut().finish_network(LINGER_NS);
    record
}

fn boot_failed(message: String) -> ExitRecord {
    ExitRecord::failed(ExitKind::BootFailed, message)
}

/// The app called `proc_exit` with this status: the error that unwinds it out of wasm.
#[derive(Debug)]
struct ProcExit(u32);

impl core::fmt::Display for ProcExit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "the app called proc_exit({})", self.0)
    }
}

impl core::error::Error for ProcExit {}

/// Defines in `linker` every `wasi_snapshot_preview1` function `module` imports in a shape
/// WASI has (once, even if imported twice), and with `stub_imports` every other function
/// import as a stub returning zero values: what `wasmvm_wasi::link` and
/// `wasmvm_engine::add_stubs` do for wasmi. Imports left undefined fail instantiation,
/// which names them.
fn link(linker: &mut Linker<World>, module: &Module, stub_imports: bool) -> Result<(), Error> {
    let mut defined: Vec<(String, String)> = Vec::new();
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let key = (import.module().to_string(), import.name().to_string());
        if defined.contains(&key) {
            continue;
        }
        let wasi = (import.module() == MODULE)
            .then(|| {
                FUNCTIONS
                    .iter()
                    .find(|s| s.name == import.name() && same_shape(s, &ty))
            })
            .flatten();
        match wasi {
            Some(sig) => define_wasi(linker, sig, ty)?,
            None if stub_imports => define_stub(linker, import.module(), import.name(), ty)?,
            None => continue,
        }
        defined.push(key);
    }
    Ok(())
}

/// Whether `ty` is the signature `sig` names.
fn same_shape(sig: &Sig, ty: &FuncType) -> bool {
    fn same(ours: &[wasmvm_wasi::ValType], theirs: impl ExactSizeIterator<Item = ValType>) -> bool {
        ours.len() == theirs.len()
            && ours.iter().zip(theirs).all(|(a, b)| match a {
                wasmvm_wasi::ValType::I32 => matches!(b, ValType::I32),
                wasmvm_wasi::ValType::I64 => matches!(b, ValType::I64),
            })
    }
    same(sig.params, ty.params()) && same(sig.results, ty.results())
}

/// The most parameters a WASI function has (`path_open`'s nine), with room to spare.
const MAX_WASI_PARAMS: usize = 16;

/// Defines one WASI function: its arguments zero-extended to 64 bits, the app's `memory`
/// export, an errno result; `proc_exit` unwinds as a [`ProcExit`] error.
fn define_wasi(linker: &mut Linker<World>, sig: &Sig, ty: FuncType) -> Result<(), Error> {
    let func = sig.func;
    linker.func_new(
        MODULE,
        sig.name,
        ty,
        move |mut caller: Caller<'_, World>, params: &[Val], results: &mut [Val]| {
            let mut args = [0u64; MAX_WASI_PARAMS];
            let n = params.len().min(MAX_WASI_PARAMS);
            for (slot, v) in args.iter_mut().zip(params) {
                *slot = match v {
                    Val::I32(x) => *x as u32 as u64,
                    Val::I64(x) => *x as u64,
                    _ => 0,
                };
            }
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                return Err(Error::msg("the module exports no memory named `memory`"));
            };
            let (bytes, wasi) = memory.data_and_store_mut(&mut caller);
            match wasi.call(func, bytes, &args[..n]) {
                Ok(errno) => {
                    if let Some(slot) = results.first_mut() {
                        *slot = Val::I32(errno.raw() as i32);
                    }
                    Ok(())
                }
                Err(exit) => Err(Error::new(ProcExit(exit.0))),
            }
        },
    )?;
    Ok(())
}

/// Defines a stub for an import WASI does not provide: it returns zero values
/// (wasmtime's `--default-values-unknown-imports`).
fn define_stub(
    linker: &mut Linker<World>,
    module: &str,
    name: &str,
    ty: FuncType,
) -> Result<(), Error> {
    let zeros = ty
        .results()
        .map(|t| Val::default_for_ty(&t))
        .collect::<Option<Vec<Val>>>()
        .ok_or_else(|| {
            Error::msg(format!(
                "no default value exists for a result of `{module}::{name}`"
            ))
        })?;
    linker.func_new(module, name, ty, move |_, _, out: &mut [Val]| {
        for (slot, zero) in out.iter_mut().zip(&zeros) {
            *slot = *zero;
        }
        Ok(())
    })?;
    Ok(())
}

/// Runs the app's entry point: `_start`, or for a reactor `_initialize` (if exported; once,
/// also when it is the export invoked) and then `invoke`. Returns the exit status an i32
/// result gives, if any.
fn call_entry(
    store: &mut Store<World>,
    instance: &Instance,
    invoke: Option<&str>,
) -> Result<Option<i32>, Error> {
    let Some(export) = invoke else {
        let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
        start.call(&mut *store, ())?;
        return Ok(None);
    };
    if export != "_initialize"
        && let Ok(init) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")
    {
        init.call(&mut *store, ())?;
    }
    let func = instance
        .get_func(&mut *store, export)
        .ok_or_else(|| Error::msg(format!("no exported function `{export}`")))?;
    let mut results = vec![Val::I32(0); func.ty(&*store).results().len()];
    func.call(&mut *store, &[], &mut results)?;
    Ok(match results.first() {
        Some(Val::I32(status)) => Some(*status),
        _ => None,
    })
}

/// Classifies how instantiation or a call into the module failed, as the interpreter's
/// runner does; `instance` (once there is one) names an uncaught exception's tag.
fn outcome(store: &mut Store<World>, instance: Option<&Instance>, e: Error) -> ExitRecord {
    if let Some(ProcExit(status)) = e.downcast_ref::<ProcExit>() {
        // As wasmi's `i32_exit`: the host maps a status outside 0..=125 to 1.
        return ExitRecord::exited(*status as i32);
    }
    if let Some(&t) = e.downcast_ref::<Trap>() {
        return match trap_code(t) {
            Some(code) => super::trapped(code),
            // A trap the interpreter cannot raise (GC, atomics): wasmtime's own words.
            None => {
                let full = t.to_string();
                let words = full.strip_prefix("wasm trap: ").unwrap_or(&full);
                super::trapped_with(None, String::from(words))
            }
        };
    }
    if e.is::<ThrownException>() {
        let mut message = String::from("uncaught wasm exception");
        // Take the exception (it stays pending in the store otherwise) and name its tag.
        if let Some(exn) = store.take_pending_exception()
            && let Ok(tag) = exn.tag(&mut *store)
            && let Some(name) = instance.and_then(|i| tag_export(store, i, &tag))
        {
            message.push_str(&format!(" (tag `{name}`)"));
        }
        return ExitRecord::failed(ExitKind::UncaughtException, message);
    }
    super::trapped_with(Some(trap::HOST_ERROR), message(&e))
}

/// The name under which `instance` exports `tag`, if it does.
fn tag_export(store: &mut Store<World>, instance: &Instance, tag: &Tag) -> Option<String> {
    let tags: Vec<(String, Tag)> = instance
        .exports(&mut *store)
        .filter_map(|export| {
            let name = export.name().to_string();
            export.into_tag().map(|t| (name, t))
        })
        .collect();
    tags.into_iter()
        .find(|(_, t)| Tag::eq(t, tag, &*store))
        .map(|(name, _)| name)
}

/// wasmvm's code for a trap (`wasmvm_abi::channel::trap`, which are wasmi's codes), for the
/// traps both engines raise.
fn trap_code(t: Trap) -> Option<u32> {
    Some(match t {
        Trap::UnreachableCodeReached => trap::UNREACHABLE,
        Trap::MemoryOutOfBounds => trap::MEMORY_OUT_OF_BOUNDS,
        Trap::TableOutOfBounds => trap::TABLE_OUT_OF_BOUNDS,
        Trap::IndirectCallToNull => trap::INDIRECT_CALL_TO_NULL,
        Trap::IntegerDivisionByZero => trap::INTEGER_DIVISION_BY_ZERO,
        Trap::IntegerOverflow => trap::INTEGER_OVERFLOW,
        Trap::BadConversionToInteger => trap::BAD_CONVERSION_TO_INTEGER,
        Trap::StackOverflow => trap::STACK_OVERFLOW,
        Trap::BadSignature => trap::BAD_SIGNATURE,
        Trap::OutOfFuel => trap::OUT_OF_FUEL,
        _ => return None,
    })
}

/// An error's message: each cause after the other, without the wasm backtrace wasmtime
/// adds as the outermost context.
fn message(e: &Error) -> String {
    let skip = usize::from(e.is::<WasmBacktrace>());
    let parts: Vec<String> = e.chain().skip(skip).map(|c| c.to_string()).collect();
    parts.join(": ")
}
