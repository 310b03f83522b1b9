//! Giving back the zero pages of an idle guest's huge pages.
//!
//! With transparent huge pages every 2 MiB the guest touches at all is resident whole: a
//! hello's three huge pages hold ~2.5 MiB of data in 6 MiB (the heap's first blocks and the
//! stack's top share one, the linear memory's first pages have one of their own). When the
//! guest has waited a while with nothing to do, the vCPU thread looks at each resident
//! 2 MiB stretch of guest RAM once, and where at least a quarter of it reads as zero it
//! drops those 4 KiB pages (`MADV_DONTNEED`: an anonymous private mapping reads back zero,
//! so the guest sees no change) and marks the stretch `MADV_NOHUGEPAGE`, or khugepaged
//! (which on a default host fills a range in whenever one page of it is present) would
//! make it whole again. A stretch that is mostly data keeps its huge page.
//!
//! Why it is safe: the one vCPU is in the VMM (a wait exit) for the whole scan, and no other
//! thread writes guest memory (the device models run on the vCPU thread; the 9P workers and
//! the pumps exchange copies), so a page read as zero stays zero until it is dropped. Only
//! anonymous RAM is trimmed: with `--no-huge-pages` the kernel's pages may be mapped from
//! the image file, where dropping a page would bring back the file's bytes, so the VMM
//! makes no trimmer then.
//!
//! The price: a dropped page the guest touches again costs a fault of its own (an exit on
//! a nested host), so the trim waits for an idle pause ([`IDLE_BEFORE_TRIM`]), looks at a
//! stretch only once, and bounds each pause's work ([`CHUNKS_PER_PAUSE`]); a guest can make
//! it read its RAM once, no more. The host frees the pages of a split huge page when it
//! next needs memory (the kernel's deferred split), and counts them out of the process's
//! RSS at once.

use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A huge page: the unit the trimmer looks at.
const CHUNK: usize = 2 << 20;
/// A base page: the unit it drops.
const PAGE: usize = 4096;
const PAGES_PER_CHUNK: usize = CHUNK / PAGE;
/// How long a guest must have waited with nothing arriving before the trimmer runs: a busy
/// guest waits often but briefly, and pages dropped between two requests would only be
/// faulted back in by the next.
pub const IDLE_BEFORE_TRIM: Duration = Duration::from_millis(100);
/// A stretch keeps its huge page unless at least this many of its pages read as zero (a
/// quarter): splitting one costs the guest TLB reach, worth it only for real memory.
const MIN_ZERO_PAGES: usize = PAGES_PER_CHUNK / 4;
/// Stretches looked at in one idle pause (64 MiB, a few ms of reading): host input that
/// arrives meanwhile waits at most that long; the rest waits for the next pause.
const CHUNKS_PER_PAUSE: usize = 32;

/// The trimmer of one VM's RAM (guest-physical `[0, ram)`, one anonymous mapping).
pub struct IdleTrim {
    ram: usize,
    /// Per 2 MiB stretch: looked at already (never again).
    seen: Vec<bool>,
    /// Bytes dropped so far, and the time the passes took, for the run's log.
    released: u64,
    spent: Duration,
}

impl IdleTrim {
    /// A trimmer for the first `ram` bytes of `mem`, which must be anonymous memory: never
    /// pages mapped from a file (see the module's notes).
    pub fn new(ram: u64) -> IdleTrim {
        let ram = ram as usize;
        IdleTrim {
            ram,
            seen: vec![false; ram.div_ceil(CHUNK)],
            released: 0,
            spent: Duration::ZERO,
        }
    }

    /// Looks at up to [`CHUNKS_PER_PAUSE`] resident stretches not seen before and drops
    /// their zero pages. Only call it while the vCPU is out of the guest.
    pub fn trim(&mut self, mem: &GuestMemoryMmap) -> Pass {
        let began = Instant::now();
        let pass = self.pass(mem);
        self.released += pass.dropped;
        self.spent += began.elapsed();
        pass
    }

    fn pass(&mut self, mem: &GuestMemoryMmap) -> Pass {
        let done = Pass {
            dropped: 0,
            finished: true,
        };
        let Ok(host) = mem.get_host_address(GuestAddress(0)) else {
            return done;
        };
        let Some(resident) = resident_pages(host, self.ram) else {
            return done;
        };
        let mut dropped = 0;
        let (mut looked, mut finished) = (0, true);
        for (chunk, seen) in self.seen.iter_mut().enumerate() {
            let first = chunk * PAGES_PER_CHUNK;
            let pages = &resident[first..resident.len().min(first + PAGES_PER_CHUNK)];
            // Nothing there yet: look when the guest has touched it.
            if *seen || pages.iter().all(|r| r & 1 == 0) {
                continue;
            }
            if looked == CHUNKS_PER_PAUSE {
                // Left for the next pass.
                finished = false;
                break;
            }
            looked += 1;
            *seen = true;
            let mut zero = [false; PAGES_PER_CHUNK];
            let mut zeros = 0;
            for (i, _) in pages.iter().enumerate().filter(|(_, r)| *r & 1 != 0) {
                // SAFETY: the page lies in the RAM mapping (`ram` bytes from `host`), and
                // nothing writes guest memory while the vCPU is out of the guest and this
                // thread scans (module notes), so a shared view of it is sound.
                let page =
                    unsafe { std::slice::from_raw_parts(host.add((first + i) * PAGE), PAGE) };
                if is_zero(page) {
                    zero[i] = true;
                    zeros += 1;
                }
            }
            // All of a stretch resident and zero is most likely the host's shared zero
            // page, mapped by reads alone: dropped like the rest, but not counted as given
            // back (the log's figure is a floor).
            let counted = zeros < PAGES_PER_CHUNK;
            if zeros >= MIN_ZERO_PAGES {
                let start = chunk * CHUNK;
                let len = CHUNK.min(self.ram - start);
                // SAFETY: `[start, start + len)` lies in the VM's anonymous RAM mapping
                // (`ram` bytes from `host`); the advice changes no contents.
                unsafe { libc::madvise(host.add(start).cast(), len, libc::MADV_NOHUGEPAGE) };
                for run in runs(&zero[..pages.len()]) {
                    let at = start + run.start * PAGE;
                    let len = run.len() * PAGE;
                    // SAFETY: as above, and every page of the run read as zero with the
                    // vCPU out of the guest and no other writer (module notes): dropping
                    // it makes the next access read zero, so the guest sees no change.
                    if unsafe { libc::madvise(host.add(at).cast(), len, libc::MADV_DONTNEED) } == 0
                        && counted
                    {
                        dropped += len as u64;
                    }
                }
            }
        }
        Pass { dropped, finished }
    }

    /// Bytes dropped so far, and the time spent looking.
    pub fn released(&self) -> (u64, Duration) {
        (self.released, self.spent)
    }
}

/// What one [`IdleTrim::trim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Bytes dropped.
    pub dropped: u64,
    /// False when it stopped at [`CHUNKS_PER_PAUSE`] with resident stretches still unseen.
    pub finished: bool,
}

/// Whether `page` holds only zero bytes: an OR over its words (which the compiler
/// vectorizes; a byte loop that stops early does not).
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8).fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().unwrap())
    }) == 0
}

/// `mincore` of `[host, host + len)`: one byte per page, bit 0 set where it is resident.
fn resident_pages(host: *mut u8, len: usize) -> Option<Vec<u8>> {
    let mut resident = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `host` starts a mapping of `len` bytes (the VM's RAM) and `resident` has one
    // byte per page of it; mincore only writes that vector.
    let ok = unsafe { libc::mincore(host.cast(), len, resident.as_mut_ptr()) } == 0;
    ok.then_some(resident)
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
    use vm_memory::Bytes;

    /// 8 MiB of anonymous guest memory that asks for huge pages, as the VMM's RAM does.
    fn ram() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 * CHUNK)]).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        // SAFETY: advice on the test's own mapping.
        unsafe { libc::madvise(host.cast(), 4 * CHUNK, libc::MADV_HUGEPAGE) };
        mem
    }

    fn resident(mem: &GuestMemoryMmap) -> Vec<bool> {
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        resident_pages(host, 4 * CHUNK)
            .unwrap()
            .iter()
            .map(|r| r & 1 != 0)
            .collect()
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
        let (chunk, i) = (p / PAGES_PER_CHUNK, p % PAGES_PER_CHUNK);
        match (chunk, i) {
            (0, _) => Some(page_of(i)),
            (1, i) if i % 50 == 7 => Some(page_of(i)),
            (1, _) => Some([0; PAGE]),
            (3, 100) => Some(page_of(i)),
            _ => None,
        }
    }

    #[test]
    fn zero_pages_go_data_stays_and_untouched_memory_stays_untouched() {
        let mem = ram();
        for p in 0..4 * PAGES_PER_CHUNK {
            if let Some(bytes) = expected(p) {
                mem.write_slice(&bytes, GuestAddress((p * PAGE) as u64))
                    .unwrap();
            }
        }
        let mut trim = IdleTrim::new(4 * CHUNK as u64);
        let pass = trim.trim(&mem);
        assert!(pass.finished);
        let dropped = pass.dropped;
        assert_eq!(trim.released().0, dropped);

        let after = resident(&mem);
        assert!(
            after[..PAGES_PER_CHUNK].iter().all(|r| *r),
            "stretch 0 lost data pages"
        );
        for i in 0..PAGES_PER_CHUNK {
            assert_eq!(
                after[PAGES_PER_CHUNK + i],
                i % 50 == 7,
                "stretch 1, page {i}"
            );
        }
        assert!(
            after[2 * PAGES_PER_CHUNK..3 * PAGES_PER_CHUNK]
                .iter()
                .all(|r| !r),
            "the untouched stretch was faulted in"
        );
        assert!(after[3 * PAGES_PER_CHUNK + 100]);
        // Stretch 1 gave back its 501 zero pages (and stretch 3 its 511 where the host
        // backed it with a huge page).
        assert!(dropped >= 501 * PAGE as u64, "{dropped}");
        // The guest reads the same bytes.
        let mut page = [0u8; PAGE];
        for p in 0..4 * PAGES_PER_CHUNK {
            mem.read_slice(&mut page, GuestAddress((p * PAGE) as u64))
                .unwrap();
            assert_eq!(page, expected(p).unwrap_or([0; PAGE]), "page {p} changed");
        }
    }

    /// Writes zeros over a quarter of stretch `chunk`'s pages (enough to trim, with or
    /// without a huge page under them) and data into the page after them (a stretch that is
    /// all zero counts as the host's zero page, not as given back).
    fn zero_quarter(mem: &GuestMemoryMmap, chunk: usize) {
        for i in 0..MIN_ZERO_PAGES {
            let at = (chunk * CHUNK + i * PAGE) as u64;
            mem.write_slice(&[0; PAGE], GuestAddress(at)).unwrap();
        }
        let data = (chunk * CHUNK + MIN_ZERO_PAGES * PAGE) as u64;
        mem.write_slice(&page_of(1), GuestAddress(data)).unwrap();
    }

    #[test]
    fn each_stretch_is_looked_at_once_and_later_ones_when_touched() {
        let mem = ram();
        zero_quarter(&mem, 0);
        let mut trim = IdleTrim::new(4 * CHUNK as u64);
        assert!(trim.trim(&mem).dropped >= (MIN_ZERO_PAGES * PAGE) as u64);
        // A stretch seen already is not looked at again, even with zero pages in it now.
        zero_quarter(&mem, 0);
        assert_eq!(trim.trim(&mem).dropped, 0, "stretch 0 was looked at twice");
        assert!(resident(&mem)[0]);
        // One touched later is.
        zero_quarter(&mem, 2);
        assert!(trim.trim(&mem).dropped >= (MIN_ZERO_PAGES * PAGE) as u64);
        assert!(!resident(&mem)[2 * PAGES_PER_CHUNK]);
    }

    #[test]
    fn one_pause_looks_at_a_bounded_number_of_stretches() {
        let chunks = CHUNKS_PER_PAUSE + 3;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), chunks * CHUNK)]).unwrap();
        for c in 0..chunks {
            mem.write_slice(&[0; PAGE], GuestAddress((c * CHUNK) as u64))
                .unwrap();
        }
        let mut trim = IdleTrim::new((chunks * CHUNK) as u64);
        assert!(!trim.trim(&mem).finished);
        assert_eq!(trim.seen.iter().filter(|s| **s).count(), CHUNKS_PER_PAUSE);
        assert!(trim.trim(&mem).finished);
        assert!(trim.seen.iter().all(|s| *s));
    }

    #[test]
    fn a_stretch_only_read_is_dropped_but_not_counted() {
        let mem = ram();
        let mut page = [1u8; PAGE];
        for i in 0..PAGES_PER_CHUNK {
            mem.read_slice(&mut page, GuestAddress((i * PAGE) as u64))
                .unwrap();
        }
        assert_eq!(page, [0; PAGE]);
        let mut trim = IdleTrim::new(4 * CHUNK as u64);
        assert_eq!(trim.trim(&mem).dropped, 0);
        assert!(!resident(&mem)[0]);
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
