//! Giving back the zero pages of an idle guest's huge pages.
//!
//! With transparent huge pages every 2 MiB the guest touches at all is resident whole: a
//! hello's three huge pages hold ~2.5 MiB of data in 6 MiB (the heap's first blocks and the
//! stack's top share one, the linear memory's first pages have one of their own). When the
//! guest has gone [`IDLE_BEFORE_TRIM`] without host input (however often its own timers
//! wake it meanwhile) and is waiting, the vCPU thread looks at
//! each resident 2 MiB stretch of guest RAM once (RAM is aligned to huge pages in the host's
//! address space, `vmm::ram`, so a stretch is one host huge page), and where at least a
//! quarter of it reads as zero it drops those 4 KiB pages (`MADV_DONTNEED`: an anonymous
//! private mapping reads back zero, so the guest sees no change) and marks the stretch
//! `MADV_NOHUGEPAGE`, or khugepaged (which on a default host fills a range in whenever one
//! page of it is present) would make it whole again. A stretch that is mostly data keeps
//! its huge page; one that is all zero (most likely the host's shared zero page, mapped by
//! reads alone) is dropped whole and may become a huge page again.
//!
//! Why it is safe: the one vCPU is in the VMM (a wait exit) for the whole scan, and no other
//! thread writes guest memory (the device models run on the vCPU thread; the 9P workers and
//! the pumps exchange copies), so a page read as zero stays zero until it is dropped
//! ([`IdleTrim::trim`] is `unsafe` for that reason: a second vCPU, an I/O thread writing
//! guest memory or vhost would break it). Only anonymous RAM is trimmed: with
//! `--no-huge-pages` the kernel's pages may be mapped from the image file, where dropping a
//! page would bring back the file's bytes, so the VMM makes no trimmer then.
//!
//! The price: a dropped page the guest touches again costs a fault of its own (an exit on
//! a nested host), so the trim waits for a second without input, looks at a stretch only once,
//! passes at most every [`PASS_INTERVAL`], reads at most [`STRETCHES_PER_BATCH`] between
//! two checks for input and a stop, and ends a batch before the guest's deadline. A guest can make the VMM read its RAM once, no more. The host frees
//! the dropped part of a split huge page when it next needs memory (the kernel's deferred
//! split), and counts it out of the process's RSS at once.
//!
//! The same pass shares what the VMM copied from the image file at boot ([`ImagePages`]):
//! with huge pages the kernel's code and the app bundle (the module, and the compiled
//! engine's artifact) are copies, private to each VM, where `--no-huge-pages` maps them
//! from the file. A page the guest has left as it was copied (it compares equal to the
//! file) is mapped from the file over the copy (mapped elsewhere, then moved over it with
//! `mremap`; private: a later guest write still makes a copy of its own), so an idle VM
//! holds no private copy of its code and VMs of one image share those pages in the host's
//! page cache. The guest reads the same bytes; what it touches again costs a fault of its
//! own, once. Pages mapped from the file are remembered and never dropped as zero pages
//! (dropping one would bring back the file's bytes, whatever the guest wrote since). The
//! file is checked to be long enough first; an image truncated or rewritten in place under
//! a running VM is the user's business, as with `--no-huge-pages` (`docs/design.md`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::ram::HUGE_PAGE;

/// The unit the trimmer looks at: one host huge page.
const STRETCH: usize = HUGE_PAGE;
/// The unit it drops.
const PAGE: usize = 4096;
const PAGES_PER_STRETCH: usize = STRETCH / PAGE;
/// How long a guest must have gone without host input (console bytes, frames) before a
/// pass: a busy server waits often but briefly, and pages dropped between two requests
/// would only be faulted back in by the next. Its own timers do not count: a runtime that
/// wakes every few milliseconds to look at its clock (Go's does) idles all the same.
pub const IDLE_BEFORE_TRIM: Duration = Duration::from_secs(1);
/// The least time from the end of one complete pass to the start of the next: a pass
/// walks all of RAM's page tables (`mincore`), which a guest that idles briefly but often
/// must not be able to ask for every second.
pub const PASS_INTERVAL: Duration = Duration::from_secs(10);
/// A batch starts only if the guest's deadline leaves it this long after the idle pause,
/// and ends half of it before the deadline, so that the guest's timers fire on time: it
/// checks the time before each stretch, and one stretch (reading 2 MiB, and for a stretch
/// holding copies of the image comparing them with the file and mapping them) takes up to
/// about a millisecond.
pub const PASS_SLACK: Duration = Duration::from_millis(4);
/// A stretch keeps its huge page unless at least this many of its pages read as zero (a
/// quarter): splitting one costs the guest TLB reach, worth it only for real memory.
const MIN_ZERO_PAGES: usize = PAGES_PER_STRETCH / 4;
/// Stretches read in one batch (64 MiB, a few ms): host input that arrives meanwhile waits
/// at most that long; the caller checks for it before the next batch.
const STRETCHES_PER_BATCH: usize = 32;

/// The trimmer of one VM's RAM (guest-physical `[0, ram)`, one anonymous mapping).
pub struct IdleTrim {
    ram: usize,
    /// Per stretch: looked at already (never again).
    seen: Vec<bool>,
    /// When the next pass may start (after a complete one, [`PASS_INTERVAL`] later).
    next_pass: Instant,
    /// When host input last reached the guest (at first, when the trimmer was made).
    input_at: Instant,
    /// The window a pass cut short resumes at.
    resume: usize,
    /// What was copied from the image file at boot, to map from the file again (dropped,
    /// with its descriptor, once a replacement fails).
    image: Option<ImagePages>,
    /// The guest pages mapped from the image file, as runs of page numbers: never to be
    /// dropped as zero pages.
    from_file: Vec<std::ops::Range<usize>>,
    /// Bytes dropped and mapped from the image file so far, and the time the passes took,
    /// for the run's log.
    released: u64,
    shared: u64,
    spent: Duration,
}

/// Guest RAM that the VMM filled with copies of the image file's bytes at boot.
pub struct ImagePages {
    file: File,
    spans: Vec<FileSpan>,
}

/// `len` bytes of guest RAM from guest address `guest` were copied from the image file's
/// bytes at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpan {
    pub guest: u64,
    pub offset: u64,
    pub len: u64,
}

impl ImagePages {
    /// The copies in `spans` of `file`'s bytes; only whole pages can be mapped, so each
    /// span is cut to the whole pages it covers, and one whose guest address and file
    /// offset do not lie alike within a page is left out.
    pub fn new(file: File, spans: impl IntoIterator<Item = FileSpan>) -> ImagePages {
        let page = PAGE as u64;
        let spans = spans
            .into_iter()
            .filter(|s| s.guest % page == s.offset % page)
            .filter_map(|s| {
                let skip = (page - s.guest % page) % page;
                let len = s.len.checked_sub(skip)? / page * page;
                (len > 0).then_some(FileSpan {
                    guest: s.guest + skip,
                    offset: s.offset + skip,
                    len,
                })
            })
            .collect();
        ImagePages { file, spans }
    }

    /// The file's length now (`fstat`, which the VMM's threads may make).
    fn file_len(&self) -> Option<u64> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        let fd = self.file.as_raw_fd();
        // A raw system call, so that it is `fstat` itself, which the seccomp filter allows,
        // whatever the C library would make of it.
        // SAFETY: fstat fills the `stat`-sized buffer given; `fd` is the file this owns.
        let got = unsafe { libc::syscall(libc::SYS_fstat, fd, stat.as_mut_ptr()) };
        // SAFETY: fstat succeeded, so it filled the buffer in.
        (got == 0).then(|| unsafe { stat.assume_init() }.st_size as u64)
    }

    /// Maps from the file, over the stretch at `at` (guest address `start`, a page per
    /// byte of `resident`, bit 0 set where `mincore` found one), every resident page of a
    /// span that still holds the file's bytes, and marks it in `shared`; returns the bytes
    /// so mapped, or `Err` when a replacement failed (see [`replace`]): the stretch is then
    /// left alone from there on, and so is sharing for the rest of the run.
    ///
    /// # Safety
    ///
    /// `[at, at + resident.len() pages)` is anonymous private memory of this process that
    /// nothing reads, writes or holds a reference into during the call.
    unsafe fn share(
        &self,
        at: *mut u8,
        start: u64,
        resident: &[u8],
        shared: &mut [bool],
    ) -> Result<u64, Broken> {
        let end = start + (resident.len() * PAGE) as u64;
        let resident_page = |p: usize| resident[p] & 1 != 0;
        // The parts of spans in this stretch that hold a resident page: most stretches
        // hold none, and cost no system call here.
        let parts: Vec<(u64, u64, u64)> = self
            .spans
            .iter()
            .filter_map(|span| {
                let from = span.guest.max(start);
                let to = (span.guest + span.len).min(end);
                if from >= to {
                    return None;
                }
                let mut pages = ((from - start) as usize / PAGE)..((to - start) as usize / PAGE);
                pages
                    .any(resident_page)
                    .then_some((from, to, span.offset + (from - span.guest)))
            })
            .collect();
        if parts.is_empty() {
            return Ok(0);
        }
        let Some(file_len) = self.file_len() else {
            return Ok(0);
        };
        let mut bytes = 0;
        for (from, to, offset) in parts {
            // A truncated file would fault the comparison below (SIGBUS): keep the copies.
            if offset.saturating_add(to - from) > file_len {
                continue;
            }
            let first = ((from - start) as usize) / PAGE;
            let pages = ((to - from) as usize) / PAGE;
            let mut same = [false; PAGES_PER_STRETCH];
            for chunk in (0..pages).step_by(VIEW_PAGES) {
                let n = VIEW_PAGES.min(pages - chunk);
                if !(first + chunk..first + chunk + n).any(resident_page) {
                    continue;
                }
                let Some(view) = self.view(offset + (chunk * PAGE) as u64, n * PAGE) else {
                    break;
                };
                for i in (chunk..chunk + n).filter(|i| resident_page(first + i)) {
                    // SAFETY: both pages lie in mappings that live through the call (the
                    // caller's stretch, the view); compared through pointers, since another
                    // process may write the file under the view.
                    same[first + i] = unsafe {
                        libc::memcmp(
                            at.add((first + i) * PAGE).cast(),
                            view.at.add((i - chunk) * PAGE).cast(),
                            PAGE,
                        )
                    } == 0;
                }
            }
            for run in runs(&same[..resident.len()]) {
                let file_at = offset + ((run.start - first) * PAGE) as u64;
                // SAFETY: the run lies in the caller's stretch, which nothing reads, writes
                // or refers into, and its pages hold the file's bytes from `file_at`, which
                // the file holds (its length was checked).
                unsafe {
                    self.replace(at.wrapping_add(run.start * PAGE), run.len() * PAGE, file_at)
                }?;
                shared[run.clone()].fill(true);
                bytes += (run.len() * PAGE) as u64;
            }
        }
        Ok(bytes)
    }

    /// Maps `len` bytes of the file from `offset` over `target`, which holds the same
    /// bytes. The file is mapped at an address of the kernel's choosing first and then moved
    /// over the target (`mremap`), so that a file system refusing the mapping leaves the
    /// target as it was. If the move fails and takes the target's pages with it (the kernel
    /// unmaps the destination first), the bytes are put back in anonymous memory from the
    /// file's mapping; if even that fails the range is left unmapped, and the guest's next
    /// touch of it ends the run with an error from `KVM_RUN` (it never reads other bytes).
    ///
    /// # Safety
    ///
    /// `[target, target + len)` is guest RAM that nothing reads, writes or refers into
    /// during the call, holding the file's `len` bytes from `offset`, which the file holds.
    unsafe fn replace(&self, target: *mut u8, len: usize, offset: u64) -> Result<(), Broken> {
        // SAFETY: a fresh private mapping of `len` bytes of the file (within its length);
        // the kernel picks the address, so it overlaps nothing.
        let source = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                self.file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if source == libc::MAP_FAILED {
            return Err(Broken::Untouched);
        }
        // SAFETY: moves the mapping just made (nothing refers into it) over the caller's
        // range, whose pages hold the same bytes and which nothing refers into.
        let moved = unsafe {
            libc::mremap(
                source,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target.cast::<libc::c_void>(),
            )
        };
        if moved != libc::MAP_FAILED {
            return Ok(());
        }
        // SAFETY: the caller's range and the source mapping, which the failed move left in
        // place; see `put_back`.
        let broken = unsafe { put_back(target, source.cast(), len) };
        // SAFETY: unmaps exactly the source mapping, which nothing refers into.
        unsafe { libc::munmap(source, len) };
        Err(broken)
    }

    /// A read-only view of `len` bytes of the file from `offset` (within its length), for
    /// as long as the value lives: compared a chunk at a time, so that the file's pages
    /// mapped here add little to the process's RSS beside the copies.
    fn view(&self, offset: u64, len: usize) -> Option<View> {
        // SAFETY: a fresh read-only private mapping of `len` bytes of the file; the kernel
        // picks the address, so it overlaps nothing.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                self.file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        (at != libc::MAP_FAILED).then_some(View { at: at.cast(), len })
    }
}

/// How a replacement failed (the stretch is left alone from then on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// The target is as it was.
    Untouched,
    /// The target's pages are gone; the same bytes are back in anonymous memory.
    Restored,
    /// The target's pages are gone and could not be put back: it is unmapped.
    Unmapped,
}

/// After a failed move over `target`: nothing to do if the target is still mapped
/// (`mincore` succeeds on mapped memory only); else anonymous memory there again, with
/// `len` bytes from `source`.
///
/// # Safety
///
/// `[target, target + len)` is guest RAM nothing refers into, and `source` `len` readable
/// bytes elsewhere.
unsafe fn put_back(target: *mut u8, source: *const u8, len: usize) -> Broken {
    let mut residency = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `residency` has a byte per page of the range; mincore only reports.
    if unsafe { libc::mincore(target.cast(), len, residency.as_mut_ptr()) } == 0 {
        return Broken::Untouched;
    }
    // SAFETY: replaces only the caller's range, which nothing refers into.
    let got = unsafe {
        libc::mmap(
            target.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if got == libc::MAP_FAILED {
        return Broken::Unmapped;
    }
    // SAFETY: `target` is now `len` writable bytes, `source` `len` readable ones elsewhere.
    unsafe { std::ptr::copy_nonoverlapping(source, target, len) };
    Broken::Restored
}

/// Pages of the image file compared at a time (see [`ImagePages::view`]).
const VIEW_PAGES: usize = 16;

/// A read-only mapping of part of the image file, unmapped when dropped.
struct View {
    at: *mut u8,
    len: usize,
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `ImagePages::view` made; no borrow of it
        // outlives `self`.
        unsafe { libc::munmap(self.at.cast(), self.len) };
    }
}

impl IdleTrim {
    /// A trimmer for `mem`'s region at guest address 0, which must be anonymous memory
    /// (never pages mapped from a file: see the module's notes); `None` unless its host
    /// address is aligned to a huge page (`vmm::ram` makes it so).
    pub fn new(mem: &GuestMemoryMmap) -> Option<IdleTrim> {
        let region = mem.find_region(GuestAddress(0))?;
        let host = mem.get_host_address(GuestAddress(0)).ok()?;
        if region.start_addr() != GuestAddress(0) || !(host as usize).is_multiple_of(STRETCH) {
            return None;
        }
        let ram = region.len() as usize;
        Some(IdleTrim {
            ram,
            seen: vec![false; ram.div_ceil(STRETCH)],
            next_pass: Instant::now(),
            input_at: Instant::now(),
            resume: 0,
            image: None,
            from_file: Vec::new(),
            released: 0,
            shared: 0,
            spent: Duration::ZERO,
        })
    }

    /// Also maps `image`'s copies from the file where the guest left them as they were
    /// (see the module's notes).
    pub fn sharing(mut self, image: ImagePages) -> IdleTrim {
        self.image = Some(image);
        self
    }

    /// How long from `now` before the next pass may start, if no host input comes first:
    /// until the guest has gone [`IDLE_BEFORE_TRIM`] without input, and
    /// [`PASS_INTERVAL`] has passed since the last complete pass.
    pub fn pause(&self, now: Instant) -> Duration {
        let quiet = (self.input_at + IDLE_BEFORE_TRIM).saturating_duration_since(now);
        quiet.max(self.next_pass.saturating_duration_since(now))
    }

    /// Host input reached the guest at `now`: it is not idle.
    pub fn note_input(&mut self, now: Instant) {
        self.input_at = now;
    }

    /// Looks at up to [`STRETCHES_PER_BATCH`] resident stretches not seen before and drops
    /// their zero pages; stops early (unfinished) once `until` has passed.
    ///
    /// # Safety
    ///
    /// `mem` is the memory this trimmer was made for, and nothing reads or writes guest
    /// memory during the call: the vCPU is out of the guest, and no other thread or device
    /// touches it (pages are replaced under it: mapped from the file, or put back).
    pub unsafe fn trim(&mut self, mem: &GuestMemoryMmap, until: Option<Instant>) -> Pass {
        let began = Instant::now();
        // SAFETY: the caller's promise, passed on.
        let pass = unsafe { self.batch(mem, until) };
        self.released += pass.dropped;
        self.shared += pass.shared;
        self.spent += began.elapsed();
        if pass.finished {
            self.next_pass = Instant::now() + PASS_INTERVAL;
            // The VMM wrote every page of its copies at boot, so the first complete pass
            // has looked at all of them: the file's descriptor can go.
            self.image = None;
        }
        pass
    }

    /// [`trim`](Self::trim)'s work, under the same contract.
    unsafe fn batch(&mut self, mem: &GuestMemoryMmap, until: Option<Instant>) -> Pass {
        let mut pass = Pass {
            dropped: 0,
            shared: 0,
            finished: true,
        };
        let same = mem
            .find_region(GuestAddress(0))
            .is_some_and(|r| r.len() as usize == self.ram);
        let Some(host) = mem.get_host_address(GuestAddress(0)).ok().filter(|_| same) else {
            return pass;
        };
        let mut resident = [0u8; STRETCHES_PER_BATCH * PAGES_PER_STRETCH];
        let mut looked = 0;
        let windows = self.seen.len().div_ceil(STRETCHES_PER_BATCH);
        for window in self.resume.min(windows)..windows {
            let first_stretch = window * STRETCHES_PER_BATCH;
            let start = first_stretch * STRETCH;
            let len = (STRETCHES_PER_BATCH * STRETCH).min(self.ram - start);
            let stretches = first_stretch..first_stretch + len.div_ceil(STRETCH);
            if self.seen[stretches.clone()].iter().all(|s| *s) {
                continue;
            }
            // SAFETY: `[start, start + len)` lies in the RAM mapping (`ram` bytes from
            // `host`), and `resident` has a byte for each of its pages.
            let ok = unsafe { libc::mincore(host.add(start).cast(), len, resident.as_mut_ptr()) };
            if ok != 0 {
                return pass;
            }
            for stretch in stretches {
                let first = (stretch - first_stretch) * PAGES_PER_STRETCH;
                let pages = PAGES_PER_STRETCH.min((self.ram - stretch * STRETCH) / PAGE);
                let resident = &resident[first..first + pages];
                // Nothing there yet: look when the guest has touched it.
                if self.seen[stretch] || resident.iter().all(|r| r & 1 == 0) {
                    continue;
                }
                let late = until.is_some_and(|u| Instant::now() >= u);
                if looked == STRETCHES_PER_BATCH || late {
                    // The rest of this window and the windows after it, next time.
                    pass.finished = false;
                    self.resume = window;
                    return pass;
                }
                looked += 1;
                self.seen[stretch] = true;
                let at = host.wrapping_add(stretch * STRETCH);
                let first_page = stretch * PAGES_PER_STRETCH;
                let mut shared = [false; PAGES_PER_STRETCH];
                if let Some(image) = &self.image {
                    let start = (stretch * STRETCH) as u64;
                    // The stretch is anonymous RAM: pages come from the file only once a
                    // stretch has been looked at, and each is looked at once.
                    // SAFETY: the stretch lies in the RAM mapping; nothing touches guest
                    // memory or refers into it during the call (the caller's promise).
                    let done = unsafe { image.share(at, start, resident, &mut shared) };
                    let runs = runs(&shared[..resident.len()]);
                    self.from_file
                        .extend(runs.map(|r| first_page + r.start..first_page + r.end));
                    match done {
                        Ok(bytes) => pass.shared += bytes,
                        Err(_) => {
                            // Something refused a mapping: no more of it, and this stretch
                            // (which may now hold a hole) is not read.
                            self.image = None;
                            continue;
                        }
                    }
                }
                // Pages mapped from the file are never dropped: they would read back the
                // file, whatever the guest wrote since.
                let mut from_file = [false; PAGES_PER_STRETCH];
                let pages = first_page..first_page + resident.len();
                for run in &self.from_file {
                    for page in run.start.max(pages.start)..run.end.min(pages.end) {
                        from_file[page - first_page] = true;
                    }
                }
                let from_file = &from_file[..resident.len()];
                // SAFETY: as above; the pages mapped from the file are left alone.
                pass.dropped += unsafe { drop_zero_pages(at, resident, from_file) };
            }
        }
        self.resume = 0;
        pass
    }

    /// Bytes dropped so far.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Bytes mapped from the image file so far.
    pub fn shared(&self) -> u64 {
        self.shared
    }

    /// The time the passes took so far.
    pub fn spent(&self) -> Duration {
        self.spent
    }
}

/// Drops the zero pages of the stretch at `at` (`resident` has a byte per page, bit 0 set
/// where `mincore` found one) if they are a quarter of it or more, leaving alone the pages
/// marked in `shared` (just mapped from the image file); returns about the bytes of memory
/// given back: none for a stretch that was all zero, taken to be the host's shared zero
/// page (a guest that wrote zeros over all of one goes uncounted), and pages still mapped
/// to the shared zero page inside a partly zero stretch are counted. Where pages were
/// mapped from the file the huge page is split already, so every zero page goes.
///
/// # Safety
///
/// `[at, at + resident.len() pages)` is private memory of this process that nothing
/// writes during the call, anonymous but for the pages marked in `shared`.
unsafe fn drop_zero_pages(at: *mut u8, resident: &[u8], shared: &[bool]) -> u64 {
    let mut zero = [false; PAGES_PER_STRETCH];
    let mut zeros = 0;
    let split = shared.iter().any(|s| *s);
    for (i, _) in resident.iter().enumerate().filter(|(_, r)| *r & 1 != 0) {
        if shared[i] {
            continue;
        }
        // SAFETY: the page lies in the range the caller vouches for, which nothing writes
        // now, so a shared view of it is sound.
        let page = unsafe { std::slice::from_raw_parts(at.add(i * PAGE), PAGE) };
        if is_zero(page) {
            zero[i] = true;
            zeros += 1;
        }
    }
    let len = resident.len() * PAGE;
    if zeros == resident.len() {
        // All zero and all resident: most likely the shared zero page, mapped by reads.
        // Dropped whole (it may become a huge page again), not counted.
        // SAFETY: every page of the range read as zero (none was mapped from the file), and
        // nothing writes it: dropping it makes the next access read zero, so the guest sees
        // no change.
        unsafe { libc::madvise(at.cast(), len, libc::MADV_DONTNEED) };
        return 0;
    }
    if zeros < MIN_ZERO_PAGES && !split {
        return 0;
    }
    // SAFETY: advice on the caller's range; it changes no contents. If it fails,
    // khugepaged would fill the stretch back in, so nothing is dropped.
    if unsafe { libc::madvise(at.cast(), len, libc::MADV_NOHUGEPAGE) } != 0 {
        return 0;
    }
    let mut dropped = 0;
    for run in runs(&zero[..resident.len()]) {
        // SAFETY: every page of the run is anonymous and read as zero, and nothing writes
        // it (the caller's promise): dropping it makes the next access read zero, so the
        // guest sees no change.
        let done = unsafe {
            libc::madvise(
                at.add(run.start * PAGE).cast(),
                run.len() * PAGE,
                libc::MADV_DONTNEED,
            )
        };
        if done == 0 {
            dropped += (run.len() * PAGE) as u64;
        }
    }
    dropped
}

/// What one [`IdleTrim::trim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Bytes given back.
    pub dropped: u64,
    /// Bytes mapped from the image file.
    pub shared: u64,
    /// False when it stopped after [`STRETCHES_PER_BATCH`] with resident stretches unseen.
    pub finished: bool,
}

/// Whether `page` holds only zero bytes: an OR over its words (which the compiler
/// vectorizes; a byte loop that stops early does not).
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8).fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().unwrap())
    }) == 0
}

/// The runs of consecutive `true`s, as index ranges.
fn runs(marks: &[bool]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = i + marks[i..].iter().position(|m| *m)?;
        let end = start
            + marks[start..]
                .iter()
                .position(|m| !*m)
                .unwrap_or(marks.len() - start);
        i = end;
        Some(start..end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::ram::{self, RamBacking};
    use vm_memory::Bytes;

    /// `stretches` × 2 MiB of guest RAM as the VMM makes it (aligned, asking for huge
    /// pages).
    /// Bound as `let (_backing, mem)`: the memory is dropped first, then the backing,
    /// which then unmaps RAM.
    fn ram(stretches: usize) -> (RamBacking, GuestMemoryMmap) {
        let (mem, backing) = ram::guest_memory(stretches * STRETCH, &[]).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        // SAFETY: advice on the test's own mapping; it changes no contents.
        unsafe { libc::madvise(host.cast(), stretches * STRETCH, libc::MADV_HUGEPAGE) };
        (backing, mem)
    }

    /// A pass over the test's memory, which no vCPU or other thread writes.
    fn pass(trim: &mut IdleTrim, mem: &GuestMemoryMmap) -> Pass {
        // SAFETY: the trimmer was made for `mem`, and only this thread touches it.
        unsafe { trim.trim(mem, None) }
    }

    fn resident(mem: &GuestMemoryMmap) -> Vec<bool> {
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let len = mem.find_region(GuestAddress(0)).unwrap().len() as usize;
        let mut pages = vec![0u8; len / PAGE];
        // SAFETY: `[host, host + len)` is the test's RAM mapping, and `pages` has a byte for
        // each of its pages.
        let ok = unsafe { libc::mincore(host.cast(), len, pages.as_mut_ptr()) };
        assert_eq!(ok, 0);
        pages.iter().map(|r| r & 1 != 0).collect()
    }

    /// Whether the mapping holding stretch `n` of `mem` is marked `MADV_NOHUGEPAGE`
    /// (`nh` in its `VmFlags`).
    fn no_huge_pages(mem: &GuestMemoryMmap, n: usize) -> bool {
        let at = mem
            .get_host_address(GuestAddress((n * STRETCH) as u64))
            .unwrap() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((from, to)) = range.split_once('-')
                && let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                )
            {
                inside = (from..to).contains(&at);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().any(|f| f == "nh");
            }
        }
        panic!("no mapping holds {at:#x}")
    }

    fn page_of(n: usize) -> [u8; PAGE] {
        let mut p = [0u8; PAGE];
        p[n % PAGE] = (n % 251) as u8 + 1;
        p
    }

    /// What the tests write where: data in every page of stretch 0; in stretch 1 data in
    /// one page of 50 and zeros written over the rest; stretch 2 never touched; one page of
    /// data in the middle of stretch 3.
    fn expected(p: usize) -> Option<[u8; PAGE]> {
        let (stretch, i) = (p / PAGES_PER_STRETCH, p % PAGES_PER_STRETCH);
        match (stretch, i) {
            (0, _) => Some(page_of(i)),
            (1, i) if i % 50 == 7 => Some(page_of(i)),
            (1, _) => Some([0; PAGE]),
            (3, 100) => Some(page_of(i)),
            _ => None,
        }
    }

    #[test]
    fn zero_pages_go_data_stays_and_untouched_memory_stays_untouched() {
        let (_backing, mem) = ram(4);
        for p in 0..4 * PAGES_PER_STRETCH {
            if let Some(bytes) = expected(p) {
                mem.write_slice(&bytes, GuestAddress((p * PAGE) as u64))
                    .unwrap();
            }
        }
        let mut trim = IdleTrim::new(&mem).unwrap();
        let done = pass(&mut trim, &mem);
        assert!(done.finished);
        assert_eq!(trim.released(), done.dropped);

        let after = resident(&mem);
        let stretch = |n: usize| &after[n * PAGES_PER_STRETCH..(n + 1) * PAGES_PER_STRETCH];
        assert!(stretch(0).iter().all(|r| *r), "stretch 0 lost data pages");
        assert!(
            !no_huge_pages(&mem, 0),
            "a stretch of data lost its huge page"
        );
        for (i, r) in stretch(1).iter().enumerate() {
            assert_eq!(*r, i % 50 == 7, "stretch 1, page {i}");
        }
        assert!(
            no_huge_pages(&mem, 1),
            "khugepaged may fill stretch 1 back in"
        );
        assert!(
            stretch(2).iter().all(|r| !r),
            "the untouched stretch was faulted in"
        );
        assert!(stretch(3)[100]);
        // Stretch 1 gave back its 501 zero pages (and stretch 3 its 511 where the host
        // backed it with a huge page).
        assert!(done.dropped >= 501 * PAGE as u64, "{}", done.dropped);
        // The guest reads the same bytes.
        let mut page = [0u8; PAGE];
        for p in 0..4 * PAGES_PER_STRETCH {
            mem.read_slice(&mut page, GuestAddress((p * PAGE) as u64))
                .unwrap();
            assert_eq!(page, expected(p).unwrap_or([0; PAGE]), "page {p} changed");
        }
    }

    /// Writes zeros over a quarter of stretch `n`'s pages (enough to trim, with or without
    /// a huge page under them) and data into the page after them (a stretch that is all
    /// zero counts as the host's zero page, not as given back).
    fn zero_quarter(mem: &GuestMemoryMmap, n: usize) {
        for i in 0..MIN_ZERO_PAGES {
            let at = (n * STRETCH + i * PAGE) as u64;
            mem.write_slice(&[0; PAGE], GuestAddress(at)).unwrap();
        }
        let data = (n * STRETCH + MIN_ZERO_PAGES * PAGE) as u64;
        mem.write_slice(&page_of(1), GuestAddress(data)).unwrap();
    }

    #[test]
    fn each_stretch_is_looked_at_once_and_later_ones_when_touched() {
        let (_backing, mem) = ram(4);
        zero_quarter(&mem, 0);
        let mut trim = IdleTrim::new(&mem).unwrap();
        assert_eq!(trim.pause(trim.input_at), IDLE_BEFORE_TRIM);
        assert!(pass(&mut trim, &mem).dropped >= (MIN_ZERO_PAGES * PAGE) as u64);
        // A complete pass puts the next one off.
        assert!(trim.pause(Instant::now()) > PASS_INTERVAL - Duration::from_secs(1));
        // A stretch seen already is not looked at again, even with zero pages in it now.
        zero_quarter(&mem, 0);
        assert_eq!(
            pass(&mut trim, &mem).dropped,
            0,
            "stretch 0 was looked at twice"
        );
        assert!(resident(&mem)[0]);
        // One touched later is.
        zero_quarter(&mem, 2);
        assert!(pass(&mut trim, &mem).dropped >= (MIN_ZERO_PAGES * PAGE) as u64);
        assert!(!resident(&mem)[2 * PAGES_PER_STRETCH]);
    }

    #[test]
    fn the_idle_pause_counts_from_the_last_input_not_from_the_wait() {
        let (_backing, mem) = ram(1);
        let mut trim = IdleTrim::new(&mem).unwrap();
        let start = trim.input_at;
        // A guest whose timers wake it every 20 ms, with no input: its waits are short, but
        // a second after its last input it idles.
        let later = start + Duration::from_millis(980);
        assert_eq!(trim.pause(later), Duration::from_millis(20));
        assert_eq!(trim.pause(start + IDLE_BEFORE_TRIM), Duration::ZERO);
        // Input starts the second again.
        trim.note_input(later);
        assert_eq!(trim.pause(later), IDLE_BEFORE_TRIM);
        assert_eq!(trim.pause(later + IDLE_BEFORE_TRIM), Duration::ZERO);
    }

    #[test]
    fn one_batch_reads_a_bounded_number_of_stretches() {
        let stretches = 2 * STRETCHES_PER_BATCH + 3;
        let (_backing, mem) = ram(stretches);
        for n in 0..stretches {
            zero_quarter(&mem, n);
        }
        let mut trim = IdleTrim::new(&mem).unwrap();
        for batches in 1..=2 {
            assert!(!pass(&mut trim, &mem).finished);
            let seen = trim.seen.iter().filter(|s| **s).count();
            assert_eq!(seen, batches * STRETCHES_PER_BATCH);
            // Not a complete pass: the next batch may follow at once.
            let idle = trim.input_at + IDLE_BEFORE_TRIM;
            assert_eq!(trim.pause(idle), Duration::ZERO);
        }
        assert!(pass(&mut trim, &mem).finished);
        assert!(trim.seen.iter().all(|s| *s));
    }

    #[test]
    fn a_batch_stops_at_its_deadline_and_the_next_resumes() {
        let stretches = STRETCHES_PER_BATCH + 5;
        let (_backing, mem) = ram(stretches);
        for n in 0..stretches {
            zero_quarter(&mem, n);
        }
        let mut trim = IdleTrim::new(&mem).unwrap();
        // SAFETY: the trimmer was made for `mem`, and only this thread touches it.
        let late = unsafe { trim.trim(&mem, Some(Instant::now())) };
        assert!(!late.finished);
        let seen = |t: &IdleTrim| t.seen.iter().filter(|s| **s).count();
        assert_eq!(seen(&trim), 0, "it read past its deadline");
        assert!(!pass(&mut trim, &mem).finished);
        assert_eq!(
            trim.resume, 1,
            "the second window is where the next batch starts"
        );
        assert!(pass(&mut trim, &mem).finished);
        assert_eq!(seen(&trim), stretches);
        assert_eq!(trim.resume, 0);
    }

    #[test]
    fn a_stretch_only_read_is_dropped_whole_but_not_counted() {
        let (_backing, mem) = ram(4);
        let mut page = [1u8; PAGE];
        for i in 0..PAGES_PER_STRETCH {
            mem.read_slice(&mut page, GuestAddress((i * PAGE) as u64))
                .unwrap();
        }
        assert_eq!(page, [0; PAGE]);
        let mut trim = IdleTrim::new(&mem).unwrap();
        assert_eq!(pass(&mut trim, &mem).dropped, 0);
        assert!(!resident(&mem)[0]);
        assert!(!no_huge_pages(&mem, 0), "it may be a huge page again");
    }

    #[test]
    fn a_last_stretch_shorter_than_a_huge_page_is_trimmed_in_bounds() {
        // 65 MiB: 32 whole stretches and a half one.
        let (mem, backing) = ram::guest_memory(65 << 20, &[]).unwrap();
        let last = 32 * STRETCH;
        for i in 0..MIN_ZERO_PAGES {
            mem.write_slice(&[0; PAGE], GuestAddress((last + i * PAGE) as u64))
                .unwrap();
        }
        mem.write_slice(&page_of(5), GuestAddress((last + (1 << 20) - PAGE) as u64))
            .unwrap();
        // A marker just past RAM, in the slack of the mapping RAM was carved from: a
        // trim that strayed past RAM would drop it.
        let past = mem
            .get_host_address(GuestAddress(0))
            .unwrap()
            .wrapping_add(65 << 20);
        // SAFETY: `vmm::ram` leaves at least a page of the mapping after RAM, and nothing
        // else uses it.
        unsafe { past.write_bytes(0x5a, PAGE) };
        let mut trim = IdleTrim::new(&mem).unwrap();
        assert!(pass(&mut trim, &mem).dropped >= (MIN_ZERO_PAGES * PAGE) as u64);
        let mut page = [0u8; PAGE];
        mem.read_slice(&mut page, GuestAddress((last + (1 << 20) - PAGE) as u64))
            .unwrap();
        assert_eq!(page, page_of(5));
        // SAFETY: as above; the page is still mapped (the backing is alive).
        let marker = unsafe { std::slice::from_raw_parts(past, PAGE) };
        assert!(
            marker.iter().all(|b| *b == 0x5a),
            "the trim reached past RAM"
        );
        drop(mem);
        drop(backing);
    }

    /// The image file of the sharing tests: page `n` of it is `page_of(n + 1000)` but for
    /// page 40, which is zero; `pages` pages long.
    fn image_file(pages: usize) -> File {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        for n in 0..pages {
            let page = if n == 40 {
                [0; PAGE]
            } else {
                page_of(n + 1000)
            };
            file.write_all(&page).unwrap();
        }
        file
    }

    /// The start of the mapping that holds guest address `addr` of `mem`, and whether it
    /// maps a file (an inode other than 0 in `/proc/self/maps`).
    fn mapping_of(mem: &GuestMemoryMmap, addr: usize) -> (usize, bool) {
        let at = mem.get_host_address(GuestAddress(addr as u64)).unwrap() as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (from, to) = fields[0].split_once('-').unwrap();
            let (from, to) = (
                usize::from_str_radix(from, 16).unwrap(),
                usize::from_str_radix(to, 16).unwrap(),
            );
            if (from..to).contains(&at) {
                return (from, fields[4] != "0");
            }
        }
        panic!("no mapping holds {at:#x}")
    }

    /// Whether guest page `p` of `mem` is mapped in this process now
    /// (`/proc/self/pagemap`'s present bit).
    fn present(mem: &GuestMemoryMmap, p: usize) -> bool {
        use std::os::unix::fs::FileExt;
        let at = mem
            .get_host_address(GuestAddress((p * PAGE) as u64))
            .unwrap() as u64;
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let mut entry = [0u8; 8];
        pagemap
            .read_exact_at(&mut entry, at / PAGE as u64 * 8)
            .unwrap();
        u64::from_le_bytes(entry) >> 63 == 1
    }

    #[test]
    fn pages_left_as_copied_are_mapped_from_the_image_and_the_rest_stay_copies() {
        let (_backing, mem) = ram(2);
        // The VMM's copy of 600 pages of the file from its second page, at guest page 10:
        // the span ends in a partial page, which stays a copy.
        let file = image_file(601);
        let copied = |p: usize| (10..610).contains(&p);
        let file_page = |p: usize| match p - 9 {
            40 => [0; PAGE],
            n => page_of(n + 1000),
        };
        for p in (0..2 * PAGES_PER_STRETCH).filter(|p| copied(*p)) {
            mem.write_slice(&file_page(p), GuestAddress((p * PAGE) as u64))
                .unwrap();
        }
        // The guest changed two pages since: data in one, zeros over the other.
        let mut expected: Vec<[u8; PAGE]> = (0..2 * PAGES_PER_STRETCH)
            .map(|p| match copied(p) {
                true => file_page(p),
                false => [0; PAGE],
            })
            .collect();
        expected[20] = page_of(7);
        expected[30] = [0; PAGE];
        for p in [20, 30] {
            mem.write_slice(&expected[p], GuestAddress((p * PAGE) as u64))
                .unwrap();
        }
        let span = FileSpan {
            guest: 10 * PAGE as u64,
            offset: PAGE as u64,
            len: 600 * PAGE as u64 - 100,
        };
        let image = ImagePages::new(file.try_clone().unwrap(), [span]);
        let mut trim = IdleTrim::new(&mem).unwrap().sharing(image);
        let done = pass(&mut trim, &mem);
        assert!(done.finished);
        // Pages 10..609, across both stretches, but the two the guest changed (the span's
        // partial last page, 609, is left out).
        let shared = (10..609).filter(|p| ![20, 30].contains(p)).count();
        assert_eq!(done.shared, (shared * PAGE) as u64);
        assert_eq!(trim.shared(), done.shared);
        // The copies are gone from this process; what the guest changed is its own still.
        // (`mincore` would report the file's pages in the page cache.)
        assert!(
            !present(&mem, 11) && !present(&mem, 608),
            "the copies are still mapped"
        );
        assert!(present(&mem, 20), "a page the guest wrote was dropped");
        // The huge page under stretch 0 is split: its zero pages went, however few.
        assert!(!present(&mem, 0) && !present(&mem, 9), "zero pages stayed");
        assert_eq!(mapping_of(&mem, 11 * PAGE), mapping_of(&mem, 19 * PAGE));
        assert!(
            mapping_of(&mem, 11 * PAGE).1,
            "page 11 is not mapped from the file"
        );
        for p in [20, 30, 609, 700] {
            assert!(
                !mapping_of(&mem, p * PAGE).1,
                "page {p} is mapped from the file"
            );
        }
        // The guest reads the same bytes everywhere, and writes stay its own.
        let read = |p: usize| {
            let mut page = [0u8; PAGE];
            mem.read_slice(&mut page, GuestAddress((p * PAGE) as u64))
                .unwrap();
            page
        };
        for (p, want) in expected.iter().enumerate() {
            assert_eq!(&read(p), want, "page {p} changed");
        }
        mem.write_slice(&page_of(3), GuestAddress(11 * PAGE as u64))
            .unwrap();
        assert_eq!(read(11), page_of(3));
        let mut in_file = [0u8; PAGE];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut in_file, 2 * PAGE as u64).unwrap();
        assert!(
            in_file == page_of(1002),
            "a guest write reached the image file"
        );
        // A stretch is looked at once: nothing is mapped or dropped twice.
        let again = pass(&mut trim, &mem);
        assert_eq!((again.shared, again.dropped), (0, 0));
        // Were a stretch looked at again, a page mapped from the file that the guest has
        // since zeroed must stay zero: dropping it would bring back the file's bytes.
        mem.write_slice(&[0; PAGE], GuestAddress(12 * PAGE as u64))
            .unwrap();
        trim.seen.fill(false);
        pass(&mut trim, &mem);
        assert_eq!(read(12), [0; PAGE], "a zeroed page read back the file");
    }

    #[test]
    fn stretches_before_and_after_a_span_are_trimmed_as_before() {
        let (_backing, mem) = ram(3);
        let file = image_file(PAGES_PER_STRETCH);
        for p in 0..PAGES_PER_STRETCH {
            let page = match p {
                40 => [0; PAGE],
                p => page_of(p + 1000),
            };
            mem.write_slice(&page, GuestAddress((STRETCH + p * PAGE) as u64))
                .unwrap();
        }
        zero_quarter(&mem, 0);
        zero_quarter(&mem, 2);
        let span = FileSpan {
            guest: STRETCH as u64,
            offset: 0,
            len: STRETCH as u64,
        };
        let mut trim = IdleTrim::new(&mem)
            .unwrap()
            .sharing(ImagePages::new(file, [span]));
        let done = pass(&mut trim, &mem);
        assert_eq!(done.shared, STRETCH as u64);
        assert!(done.dropped >= 2 * (MIN_ZERO_PAGES * PAGE) as u64);
        assert!(
            trim.image.is_none(),
            "the descriptor outlived the first complete pass"
        );
    }

    #[test]
    fn a_failed_move_puts_the_bytes_back_only_where_they_went() {
        let (_backing, mem) = ram(1);
        let at = |p: usize| {
            mem.get_host_address(GuestAddress((p * PAGE) as u64))
                .unwrap()
        };
        let source = [page_of(1), page_of(2)].concat();
        let read = |p: usize| {
            let mut page = [0u8; PAGE];
            mem.read_slice(&mut page, GuestAddress((p * PAGE) as u64))
                .unwrap();
            page
        };
        // Still mapped: left as it is.
        mem.write_slice(&page_of(9), GuestAddress(0)).unwrap();
        // SAFETY: the test's own RAM, which nothing else touches; `source` is two pages.
        let untouched = unsafe { put_back(at(0), source.as_ptr(), 2 * PAGE) };
        assert_eq!(untouched, Broken::Untouched);
        assert_eq!(read(0), page_of(9));
        // Unmapped (as a move that failed after unmapping its destination leaves it): the
        // bytes come back, in anonymous memory.
        // SAFETY: as above; the two pages are put back before anything reads them.
        unsafe { libc::munmap(at(4).cast(), 2 * PAGE) };
        // SAFETY: as above.
        let restored = unsafe { put_back(at(4), source.as_ptr(), 2 * PAGE) };
        assert_eq!(restored, Broken::Restored);
        assert_eq!((read(4), read(5)), (page_of(1), page_of(2)));
        assert!(!mapping_of(&mem, 4 * PAGE).1);
    }

    #[test]
    fn a_truncated_image_file_leaves_the_copies_alone() {
        let (_backing, mem) = ram(1);
        let file = image_file(100);
        for p in 0..100 {
            let page = match p {
                40 => [0; PAGE],
                p => page_of(p + 1000),
            };
            mem.write_slice(&page, GuestAddress((p * PAGE) as u64))
                .unwrap();
        }
        let span = FileSpan {
            guest: 0,
            offset: 0,
            len: 100 * PAGE as u64,
        };
        let image = ImagePages::new(file.try_clone().unwrap(), [span]);
        file.set_len(50 * PAGE as u64).unwrap();
        let mut trim = IdleTrim::new(&mem).unwrap().sharing(image);
        assert_eq!(pass(&mut trim, &mem).shared, 0);
        let mut page = [0u8; PAGE];
        mem.read_slice(&mut page, GuestAddress(70 * PAGE as u64))
            .unwrap();
        assert_eq!(page, page_of(1070));
    }

    #[test]
    fn spans_are_cut_to_whole_pages_that_lie_alike() {
        let file = tempfile::tempfile().unwrap();
        let span = |guest: u64, offset: u64, len: u64| FileSpan { guest, offset, len };
        let image = ImagePages::new(
            file,
            [
                span(0x20_0000, 0x1000, 0x1f_4a58),
                span(0x4f_e100, 0x1f_6100, 0x3000),
                span(0x1000, 0x1800, 0x4000),
                span(0x1000, 0x1000, 0xfff),
            ],
        );
        assert_eq!(
            image.spans,
            [
                span(0x20_0000, 0x1000, 0x1f_4000),
                span(0x4f_f000, 0x1f_7000, 0x2000),
            ]
        );
    }

    #[test]
    fn zero_is_every_byte_zero() {
        let mut page = [0u8; PAGE];
        assert!(is_zero(&page));
        for at in [0, 7, 8, 2047, PAGE - 1] {
            page[at] = 0x80;
            assert!(!is_zero(&page), "{at}");
            page[at] = 0;
        }
    }

    #[test]
    fn runs_are_the_stretches_of_marks() {
        let marks = [true, true, false, true, false, false, true];
        assert_eq!(runs(&marks).collect::<Vec<_>>(), vec![0..2, 3..4, 6..7]);
        assert_eq!(runs(&[false; 4]).count(), 0);
        assert_eq!(runs(&[true; 3]).collect::<Vec<_>>(), vec![0..3]);
    }
}
