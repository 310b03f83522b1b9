//! The compiled engine: wasmtime's configuration, shared by the packer (which compiles a
//! module with Cranelift into an artifact) and the kernel (which runs the artifact with
//! wasmtime's runtime and no compiler).
//!
//! An artifact loads only into the same wasmtime version with the same settings, and the
//! two sides build wasmtime with different cargo features, so their defaults differ: every
//! wasm feature and every tunable the artifact records is set here explicitly, and
//! [`ENGINE_ID`] names the result. The settings that matter most come from the guest: it
//! runs at CPL 3 and cannot take a CPU exception, so nothing may rely on a signal.
//!
//! - `signals_based_traps(false)`: bounds, division and stack-limit checks are explicit
//!   code, and a trap is a call into the runtime, never a fault.
//! - `memory_reservation(0)`, `memory_guard_size(0)`, `memory_init_cow(false)`: linear
//!   memory is a heap allocation that grows by moving; there are no guard pages to fault on.
//! - The target is the x86-64 baseline (SSE2, no other extension): the packer may run on a
//!   newer CPU than the hosts that boot the image, and the guest CPU advertises only the
//!   baseline on some of them.
//! - Exceptions need wasmtime's GC support and a collector: deferred reference counting,
//!   the one that frees memory.

use core::num::NonZeroUsize;

use wasmtime::{Collector, Config, WasmBacktraceDetails};

/// The exact wasmtime build the artifact format belongs to.
pub const WASMTIME_VERSION: &str = "48.0.11";

/// The engine an artifact is compiled for: the wasmtime version and the revision of the
/// settings below. Change the revision whenever a setting changes.
pub const ENGINE_ID: &str = "wasmtime 48.0.11, wasmvm settings 1";

/// The deepest wasm stack a call may use before it traps with "call stack exhausted".
/// The kernel's stack must hold this plus what runs below the limit unchecked (host
/// functions, the trap path): see the kernel's `STACK_SIZE`.
pub const MAX_WASM_STACK: usize = 1 << 20;

/// Linear memory grows in place into this much spare capacity before it moves.
const MEMORY_GROWTH_RESERVE: u64 = 1 << 20;

/// The compiled engine's configuration, as both sides use it. The packer adds the target
/// and the optimisation level ([`compiler_config`]); the kernel adds its code memory.
pub fn config() -> Config {
    let mut c = Config::new();
    // Wasm features: what wasm32-wasip1 toolchains emit, plus exception handling.
    c.wasm_tail_call(true)
        .wasm_multi_value(true)
        .wasm_multi_memory(true)
        .wasm_bulk_memory(true)
        .wasm_reference_types(true)
        .wasm_function_references(true)
        .wasm_simd(true)
        .wasm_relaxed_simd(true)
        // The same results on every host: an image must not behave by CPU.
        .relaxed_simd_deterministic(true)
        .wasm_extended_const(true)
        // The standard encoding only (its legacy draft stays off by default).
        .wasm_exceptions(true)
        .wasm_gc(true)
        // wasm32 only: WASI preview1 passes 32-bit pointers.
        .wasm_memory64(false)
        .wasm_custom_page_sizes(false)
        .wasm_wide_arithmetic(false)
        .wasm_stack_switching(false)
        .wasm_branch_hinting(false)
        .wasm_shared_everything_threads(false)
        // One vCPU and no component model; these setters exist only with some features.
        .wasm_features(
            wasmtime::WasmFeatures::THREADS
                | wasmtime::WasmFeatures::COMPONENT_MODEL
                | wasmtime::WasmFeatures::CM_ASYNC,
            false,
        )
        .concurrency_support(false);
    // No signals and no virtual memory (see the module docs).
    c.signals_based_traps(false)
        .memory_reservation(0)
        .memory_guard_size(0)
        .memory_reservation_for_growth(MEMORY_GROWTH_RESERVE)
        .memory_init_cow(false)
        .memory_may_move(true)
        .guard_before_linear_memory(false)
        .table_lazy_init(true)
        .gc_heap_reservation(0)
        .gc_heap_guard_size(0)
        .gc_heap_reservation_for_growth(MEMORY_GROWTH_RESERVE)
        .gc_heap_may_move(true)
        .collector(Collector::DeferredReferenceCounting);
    // No fuel, no epochs, no debugger: nothing the artifact would have to check for.
    c.consume_fuel(false)
        .epoch_interruption(false)
        .debug_info(false)
        .wasm_backtrace_details(WasmBacktraceDetails::Disable)
        .wasm_backtrace_max_frames(NonZeroUsize::new(20));
    c.max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(MAX_WASM_STACK);
    c
}

/// The packer's configuration: [`config`] for the x86-64 baseline, optimised for speed.
#[cfg(feature = "wasmtime-compiler")]
pub fn compiler_config() -> Config {
    let mut c = config();
    // An explicit target keeps Cranelift from using this host's CPU extensions: every ISA
    // flag stays at its baseline default (SSE2). Only the OS and architecture are
    // recorded; the kernel is built for the same triple.
    c.target("x86_64-unknown-linux-gnu")
        .expect("wasmtime knows x86_64-unknown-linux-gnu");
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    c
}

#[cfg(all(test, feature = "wasmtime-compiler"))]
mod tests {
    use super::*;

    #[test]
    fn the_compiler_configuration_builds_an_engine_and_compiles() {
        let engine = wasmtime::Engine::new(&compiler_config()).unwrap();
        let wasm = wat::parse_str(
            r#"(module
                 (tag $e (param i32))
                 (func (export "_start") (result i32)
                   (block $h (result i32)
                     (try_table (catch $e $h) (throw $e (i32.const 7)))
                     (i32.const 0))))"#,
        )
        .unwrap();
        let artifact = engine.precompile_module(&wasm).unwrap();
        assert!(artifact.starts_with(b"\x7fELF"));
    }
}
