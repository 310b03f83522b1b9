//! The interpreted engine: wasmi runs the module, with WASI linked by
//! `wasmvm_wasi::link` and the rest of the glue (configuration, stubs, entry) from
//! `wasmvm_engine`.

use alloc::format;

use wasmi::{Engine, Error, Linker, Module, Store};
use wasmvm_abi::channel::{ExitKind, ExitRecord, trap};
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
    let module = match Module::new(&engine, launch.module) {
        Ok(m) => m,
        Err(e) => return ExitRecord::failed(ExitKind::BootFailed, format!("invalid module: {e}")),
    };
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
