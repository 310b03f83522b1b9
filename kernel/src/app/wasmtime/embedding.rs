//! What wasmtime's runtime needs from this kernel as its platform (no `std`, no virtual
//! memory, no signals), and the compiled engine's only `unsafe`: loading the artifact.
//!
//! - Code memory ([`InPlace`]): wasmtime runs code where it lies and asks the embedder to
//!   make it executable. All guest RAM is identity mapped and executable (no NX bit), and
//!   x86 keeps instruction fetches coherent with earlier stores, so there is nothing to do.
//! - Thread-local slots (`wasmtime_tls_get`/`wasmtime_tls_set`): one CPU, no interrupts,
//!   so one static array; wasmtime uses slot 0 (slot 1 only with component-model async).
//! - Loading ([`load`]): the artifact is run in place in the bundle, which the loader put
//!   page aligned in RAM that nothing writes for the rest of the run.
//!
//! The rest wasmtime needs is the kernel's: `memcpy` & co. (`arch::mem`), a global
//! allocator that honours alignment (`heap`, whose memory is executable too), the panic
//! handler (`main.rs`).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};

use wasmtime::{CustomCodeMemory, Engine, Module};

/// Alignment of the artifact's start: wasmtime asserts that its `.text` section, aligned
/// to a page inside the artifact, is aligned to this in memory, and Cranelift's 16-byte
/// constant-pool loads rely on it.
const CODE_ALIGN: usize = 4096;

/// Code memory that is executable already.
struct InPlace;

impl CustomCodeMemory for InPlace {
    fn required_alignment(&self) -> usize {
        CODE_ALIGN
    }

    fn publish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }

    // Never an error: wasmtime `expect`s this when it drops a module.
    fn unpublish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// The compiled engine: the packer's configuration (`wasmvm_engine::compiled`), so that
/// the artifact is accepted, plus this kernel's code memory.
pub fn engine() -> wasmtime::Result<Engine> {
    let mut config = wasmvm_engine::compiled::config();
    config.with_custom_code_memory(Some(Arc::new(InPlace)));
    Engine::new(&config)
}

/// Loads the artifact in place: its code runs where it lies. Fails on a misaligned
/// artifact and on anything wasmtime refuses (another version or configuration, a damaged
/// object file), never with a panic.
pub fn load(engine: &Engine, artifact: &'static [u8]) -> Result<Module, String> {
    if !artifact.as_ptr().addr().is_multiple_of(CODE_ALIGN) {
        return Err(format!(
            "it lies at {:p}, not aligned to {CODE_ALIGN} bytes: its code cannot run in place",
            artifact.as_ptr()
        ));
    }
    // Why these bytes may run: they come from the image, as this kernel does, so whoever
    // wrote the image chose the guest's code either way and trusting the artifact adds no
    // trust (the host checks the bundle's checksums, `run --verify` its signer).
    // `Launch::new` checked that the manifest names this exact engine
    // (`compiled::ENGINE_ID`), and wasmtime checks the object file's header, version,
    // flags, tunables and features before it trusts anything in it. The slice is the
    // bundle segment: `'static`, never written (the heap starts above it; wasmtime only
    // reads an externally owned image), aligned as checked above, executable as all RAM.
    // SAFETY: the bytes are this engine's artifact and outlive the module unchanged, aligned
    // and executable, as the paragraph above establishes.
    let module = unsafe { Module::deserialize_raw(engine, NonNull::from(artifact)) };
    module.map_err(|e| super::message(&e))
}

/// wasmtime's thread-local slots. Relaxed atomics are plain loads and stores on x86; the
/// kernel has one thread.
static TLS: [AtomicPtr<u8>; 2] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 2];

/// Called by wasmtime's runtime (`wasmtime-platform.h`): the value of slot `slot`, null
/// until set.
#[unsafe(no_mangle)]
pub extern "C" fn wasmtime_tls_get(slot: usize) -> *mut u8 {
    TLS.get(slot)
        .map_or(core::ptr::null_mut(), |s| s.load(Ordering::Relaxed))
}

/// Called by wasmtime's runtime: sets slot `slot` to `ptr`, stored verbatim (wasmtime
/// keeps a flag in its low bit).
#[unsafe(no_mangle)]
pub extern "C" fn wasmtime_tls_set(slot: usize, ptr: *mut u8) {
    // wasmtime uses slots 0 and 1 only; another is ignored rather than a panic across
    // the C boundary.
    if let Some(s) = TLS.get(slot) {
        s.store(ptr, Ordering::Relaxed);
    }
}
