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
//! - Linear memory ([`LinearMemories`]): the app's memory lies in place in one buffer of
//!   all the heap the kernel does not keep, as the interpreter's does, so growth never
//!   copies it, and its untouched pages stay untouched (`heap::static_buffer`).
//!
//! The rest wasmtime needs is the kernel's: `memcpy` & co. (`arch::mem`), a global
//! allocator that honours alignment (`heap`, whose memory is executable too), the panic
//! handler (`main.rs`).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use wasmtime::{CustomCodeMemory, Engine, LinearMemory, MemoryCreator, MemoryType, Module};

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
    config.with_host_memory(Arc::new(LinearMemories));
    Engine::new(&config)
}

/// Makes the memories wasmtime asks for: the app's linear memory in place when
/// [`place_app_memory`] allowed it, any other (the GC heap of an app that throws
/// exceptions, every memory of a module with several) in a vector that grows by moving, as
/// wasmtime's own memories do under this configuration.
struct LinearMemories;

/// The initial size, in wasm pages, of the memory that may take the in-place buffer; 0
/// when none may (or it was taken).
static IN_PLACE_PAGES: AtomicU64 = AtomicU64::new(0);

/// Lets the app's memory go in place, for a module that defines exactly one: the buffer
/// takes all the heap the kernel does not keep, so a second memory, which must fit in the
/// kernel's share, could hardly grow; modules with several keep wasmtime's usual memories.
/// The memory is told by its initial size: wasmtime makes a GC heap (0 pages at start)
/// before the instance's memories when the module throws exceptions, and that one must
/// not take the buffer. A module whose memory starts empty keeps the usual memory too.
pub fn place_app_memory(module: &Module) {
    let needs = module.resources_required();
    let pages = match (needs.num_memories, needs.max_initial_memory_size) {
        (1, Some(pages)) => pages,
        _ => 0,
    };
    IN_PLACE_PAGES.store(pages, Ordering::Relaxed);
}

// SAFETY: every memory returned is zero filled, owned by wasmtime alone, and accessible
// for `byte_size` bytes at `as_ptr` (see `InPlaceMemory` and `MovingMemory`); the
// configuration asks for no guard pages and allows memories to move, which both honour.
unsafe impl MemoryCreator for LinearMemories {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        _reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if guard_size_in_bytes != 0 {
            return Err(format!(
                "a linear memory with {guard_size_in_bytes} bytes of guard pages: this kernel maps none"
            ));
        }
        let app = IN_PLACE_PAGES.load(Ordering::Relaxed);
        let room = if app != 0 && ty.minimum() == app {
            IN_PLACE_PAGES.store(0, Ordering::Relaxed);
            match InPlaceMemory::new(minimum, maximum) {
                Ok(memory) => return Ok(Box::new(memory)),
                Err(room) => Some(room),
            }
        } else {
            None
        };
        let mut memory = MovingMemory {
            chunks: Vec::new(),
            base: NonNull::dangling(),
            len: 0,
        };
        if memory.grow_to(minimum).is_err() {
            if let Some(room) = room.filter(|&room| room < minimum) {
                REFUSED.store(minimum, Ordering::Relaxed);
                REFUSED_ROOM.store(room, Ordering::Relaxed);
            }
            return Err(format!("no heap left for a memory of {minimum} bytes"));
        }
        Ok(Box::new(memory))
    }
}

/// The app's memory that did not fit at its initial size: bytes asked (0: none) and what
/// the heap left for it, for [`memory_refused`].
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static REFUSED_ROOM: AtomicUsize = AtomicUsize::new(0);

/// Whether instantiation failed because the app's linear memory did not fit at its initial
/// size: (bytes asked, bytes the heap left for it).
pub fn memory_refused() -> Option<(usize, usize)> {
    let needed = REFUSED.load(Ordering::Relaxed);
    (needed > 0).then(|| (needed, REFUSED_ROOM.load(Ordering::Relaxed)))
}

/// The app's linear memory in one heap buffer that runs to the heap's end (or the
/// memory's maximum), whose length is also how far the memory can grow.
struct InPlaceMemory {
    base: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: the memory is plain bytes that only its owner (wasmtime, on the kernel's one
// thread) reaches through `base`.
unsafe impl Send for InPlaceMemory {}
// SAFETY: as for `Send`; `&InPlaceMemory` only reads the three fields.
unsafe impl Sync for InPlaceMemory {}

impl InPlaceMemory {
    /// Fails if the heap holds no buffer for `minimum` bytes, with the room it leaves for
    /// the app's memory.
    fn new(minimum: usize, maximum: Option<usize>) -> Result<Self, usize> {
        let (used, free) = crate::heap::usage();
        // Compiled code was compiled at pack time: the kernel makes none while the app runs.
        let reserve = crate::app::kernel_reserve(used + free, 0);
        let room = free.saturating_sub(reserve);
        if room < minimum.max(1) {
            return Err(room);
        }
        let len = maximum.filter(|&max| max < room);
        let buf = crate::heap::static_buffer(reserve, len).ok_or(room)?;
        if buf.len() < minimum {
            // Part of the free heap lies below its big stretch: the buffer got the room
            // there is (and keeps it: nothing else would fit there either).
            return Err(buf.len());
        }
        crate::channel::log(&format!(
            "kernel: linear memory of up to {} MiB in place at {:#x} ({} KiB at start)",
            buf.len() >> 20,
            buf.as_ptr() as usize,
            minimum >> 10
        ));
        let mut memory = Self {
            capacity: buf.len(),
            base: NonNull::from(buf).cast(),
            len: 0,
        };
        memory.grow_to(minimum).map_err(|_| room)?;
        // The zero fill went through `memset`, which skipped the untouched pages; had it
        // stored them some other way, later fills would not be noticed.
        if crate::heap::untouched_from() < memory.base.as_ptr() as usize + minimum {
            crate::heap::forget_untouched();
        }
        Ok(memory)
    }
}

// SAFETY: `base` points to `capacity` bytes that only this memory reaches, of which the
// first `len` are accessible, zero filled when they became so, and the base never moves.
unsafe impl LinearMemory for InPlaceMemory {
    fn byte_size(&self) -> usize {
        self.len
    }

    fn byte_capacity(&self) -> usize {
        self.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.capacity {
            wasmtime::bail!(
                "linear memory full: {new_size} bytes asked, {} the most",
                self.capacity
            );
        }
        if new_size > self.len {
            // SAFETY: `[len, new_size)` lies within the buffer (checked just above).
            unsafe {
                core::ptr::write_bytes(self.base.as_ptr().add(self.len), 0, new_size - self.len)
            };
            self.len = new_size;
        }
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }
}

/// A memory in a vector of 16-byte chunks (the alignment wasmtime's own memories keep),
/// which moves when it grows past its capacity.
struct MovingMemory {
    chunks: Vec<Chunk>,
    /// `chunks.as_mut_ptr()`, taken after each growth: wasmtime writes through it.
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: as for `InPlaceMemory`: only wasmtime reaches the bytes, through `base`.
unsafe impl Send for MovingMemory {}
// SAFETY: as for `Send`; `&MovingMemory` only reads its fields.
unsafe impl Sync for MovingMemory {}

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([u8; 16]);

// SAFETY: the vector holds `len` accessible bytes (rounded up to whole chunks), zero
// filled by `resize` as they became accessible, and may move on growth, which the
// configuration allows.
unsafe impl LinearMemory for MovingMemory {
    fn byte_size(&self) -> usize {
        self.len
    }

    fn byte_capacity(&self) -> usize {
        self.chunks.capacity() * size_of::<Chunk>()
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        let chunks = new_size.div_ceil(size_of::<Chunk>());
        if chunks > self.chunks.len() {
            // Room to grow again without moving if the heap has it, else just enough.
            let more = chunks - self.chunks.len();
            if self.chunks.try_reserve(more).is_err() {
                self.chunks.try_reserve_exact(more).map_err(|_| {
                    wasmtime::format_err!("no heap left to grow a memory to {new_size} bytes")
                })?;
            }
            self.chunks.resize(chunks, Chunk([0; 16]));
            self.base = NonNull::from(self.chunks.as_mut_slice()).cast();
        }
        self.len = self.len.max(new_size);
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }
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
