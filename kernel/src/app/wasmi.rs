//! The interpreted engine: wasmi runs the module, with WASI linked by
//! `wasmvm_wasi::link` and the rest of the glue (configuration, stubs, entry) from
//! `wasmvm_engine`.

use alloc::format;

use wasmi::{AsContextMut, Engine, Error, Linker, Memory, MemoryType, Module, Store};
use wasmvm_abi::channel::{ExitKind, ExitRecord, trap};
use wasmvm_engine::linear_memory::{self, Limits};
use wasmvm_wasi::link;

use super::{LINGER_NS, Launch};

/// Runs the app to completion.
pub fn run(mut launch: Launch) -> ExitRecord {
    let started = crate::clock::monotonic_ns();
    // Function bodies are validated and translated on first call: `pack` validated the
    // whole module eagerly and the bundle checksum pins those bytes, so the boot does not
    // pay for it again (a hello's 80 KB module: 0.4 ms instead of 2 ms here).
    let mut config = wasmvm_engine::engine_config();
    config.compilation_mode(wasmi::CompilationMode::Lazy);
    let engine = Engine::new(&config);
    // The module's own memory becomes an import we give as one buffer that growth only
    // extends (see `wasmvm_engine::linear_memory`).
    let rewritten = linear_memory::import_own_memory(launch.module);
    let bytes = rewritten.as_ref().map_or(launch.module, |(b, _)| &b[..]);
    let module = match Module::new(&engine, bytes) {
        Ok(m) => m,
        Err(e) => return ExitRecord::failed(ExitKind::BootFailed, format!("invalid module: {e}")),
    };
    let limits = rewritten.map(|(_, limits)| limits);
    let parsed = crate::clock::monotonic_ns();
    let wasi = match super::world(&mut launch) {
        Ok(w) => w,
        Err(e) => return ExitRecord::failed(ExitKind::BootFailed, e),
    };
    let mut store = Store::new(&engine, wasi);
    let mut linker = Linker::new(&engine);
    let linked = link::add_to_linker(&mut linker, &module).and_then(|()| {
        if launch.stub_imports {
            wasmvm_engine::add_stubs(&mut linker, &module)
        } else {
            Ok(())
        }
    });
    if let Err(e) = linked {
        return ExitRecord::failed(ExitKind::BootFailed, format!("linking WASI: {e}"));
    }
    if let Some(limits) = limits {
        let memory = match linear_memory_for(&mut store, limits, launch.module.len()) {
            Ok(m) => m,
            Err(record) => return record,
        };
        if let Err(e) = linker.define(linear_memory::MODULE, linear_memory::NAME, memory) {
            return ExitRecord::failed(ExitKind::BootFailed, format!("linking memory: {e}"));
        }
    }
    let instance = match linker.instantiate_and_start(&mut store, &module) {
        Ok(i) => i,
        Err(e) => return outcome(e),
    };
    let invoke = launch.invoke.as_deref();
    super::log_ready(started, parsed, "parsed", invoke);
    let record = match wasmvm_engine::call_entry(&mut store, &instance, invoke) {
        Ok(status) => ExitRecord::exited(status.unwrap_or(0)),
        Err(e) => outcome(e),
    };
    store.data_mut().finish_network(LINGER_NS);
    record
}

/// Classifies how a call into the module failed.
fn outcome(e: Error) -> ExitRecord {
    if let Some(status) = e.i32_exit_status() {
        return ExitRecord::exited(status);
    }
    match e.as_trap_code() {
        // wasmvm's trap codes are wasmi's.
        Some(code) => super::trapped(u8::from(code) as u32),
        None => super::trapped_with(Some(trap::HOST_ERROR), format!("{e}")),
    }
}

/// The app's linear memory: a buffer of all the heap the kernel does not keep, up to the
/// module's maximum, whose size is also the memory's maximum (so `memory.grow` beyond it
/// returns -1). If the heap is too fragmented or small for the module's minimum, a
/// growable memory as wasmi makes them; if that fails too, the boot fails naming the sizes.
fn linear_memory_for(
    store: &mut Store<impl Sized>,
    limits: Limits,
    module_len: usize,
) -> Result<Memory, ExitRecord> {
    const PAGE: usize = 64 << 10;
    let wanted = limits.max.unwrap_or(65536).min(65536) as usize;
    let (used, free) = crate::heap::usage();
    // wasmi translates functions as they are first called: about 8 bytes per byte of module.
    let reserve = super::kernel_reserve(used + free, module_len.saturating_mul(8));
    let room = free.saturating_sub(reserve) / PAGE;
    // The kernel's share lies below the buffer, which runs to the end of the heap unless
    // the module's maximum is smaller.
    let len = (wanted < room).then_some(wanted * PAGE);
    let fits = room >= (limits.min as usize).max(1);
    if let Some(buf) = fits
        .then(|| crate::heap::static_buffer(reserve, len))
        .flatten()
    {
        let pages = (buf.len() / PAGE).min(wanted);
        if pages >= limits.min as usize && pages > 0 {
            crate::channel::log(&format!(
                "kernel: linear memory of up to {} MiB in place at {:#x} ({} pages at start)",
                (pages * PAGE) >> 20,
                buf.as_ptr() as usize,
                limits.min
            ));
            let ty = MemoryType::new(limits.min, Some(pages as u32));
            let exposed = buf.as_ptr() as usize + limits.min as usize * PAGE;
            let memory = Memory::new_static(store.as_context_mut(), ty, buf).map_err(outcome)?;
            // wasmi zeroed the initial pages with `memset`, which skipped the untouched
            // ones; had it stored them some other way, later fills would not be noticed.
            if crate::heap::untouched_from() < exposed {
                crate::heap::forget_untouched();
            }
            return Ok(memory);
        }
        if pages < limits.min as usize {
            // Part of the free heap lies below its big stretch: the buffer got the room
            // there is, and holds it (nothing else would fit there either).
            return Err(super::no_room_for_memory(
                limits.min as usize * PAGE,
                buf.len(),
            ));
        }
    }
    Memory::new(
        store.as_context_mut(),
        MemoryType::new(limits.min, limits.max),
    )
    .map_err(|e| match fits {
        true => outcome(e),
        false => super::no_room_for_memory(limits.min as usize * PAGE, room * PAGE),
    })
}
