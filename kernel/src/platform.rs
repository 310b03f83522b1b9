//! The kernel's implementation of the WASI [`Platform`]: the host channel for stdio, the
//! kernel clocks, and a ChaCha20 stream seeded from host entropy for `random_get`.

use alloc::vec::Vec;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use wasmvm_abi::channel::to_host;
use wasmvm_wasi::{Clock, Platform, Stdio};

use crate::{arch, channel, clock};

pub struct KernelPlatform {
    rng: ChaCha20Rng,
}

impl KernelPlatform {
    /// `seed` is fresh host entropy from the run configuration. Without one (a disk image,
    /// or a bare loader that passes no configuration) the CPU's `rdrand` seeds the stream
    /// where it exists; else the TSC is the only per-boot variation: weak, and documented as
    /// such.
    pub fn new(seed: Option<[u8; 32]>) -> Self {
        let seed = seed.unwrap_or_else(|| {
            let mut s = [0u8; 32];
            for chunk in s.chunks_mut(8) {
                let word = arch::rdrand().unwrap_or(0) ^ arch::rdtsc();
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            s
        });
        KernelPlatform {
            rng: ChaCha20Rng::from_seed(seed),
        }
    }
}

impl Platform for KernelPlatform {
    fn write(&mut self, stream: Stdio, bytes: &[u8]) {
        let kind = match stream {
            Stdio::Stdout => to_host::STDOUT,
            Stdio::Stderr => to_host::STDERR,
        };
        channel::send(kind, bytes);
    }

    fn read_stdin(&mut self, buf: &mut [u8]) -> usize {
        channel::read_stdin(buf)
    }

    fn now_ns(&mut self, clock: Clock) -> u64 {
        match clock {
            Clock::Realtime => clock::realtime_ns(),
            Clock::Monotonic | Clock::ProcessCpuTime | Clock::ThreadCpuTime => {
                clock::monotonic_ns()
            }
        }
    }

    fn resolution_ns(&self, _clock: Clock) -> u64 {
        clock::resolution_ns()
    }

    fn random(&mut self, buf: &mut [u8]) {
        self.rng.fill_bytes(buf);
    }

    fn stdin_ready(&mut self) -> bool {
        channel::stdin_ready()
    }

    fn p9_transact(&mut self, share: u32, request: &[u8], reply: &mut Vec<u8>) -> bool {
        crate::p9::transact(share as usize, request, reply)
    }

    fn wait_event(&mut self, deadline_ns: u64) {
        let now = clock::monotonic_ns();
        if now < deadline_ns && !crate::net::rx_pending() {
            let micros = (deadline_ns - now).div_ceil(1000);
            channel::wait_us(u32::try_from(micros).unwrap_or(u32::MAX - 1));
        }
    }

    fn net_receive(&mut self, frame: &mut Vec<u8>) -> bool {
        crate::net::receive(frame)
    }

    fn net_can_send(&mut self) -> bool {
        crate::net::can_send()
    }

    fn net_send(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> bool {
        crate::net::send(len, fill)
    }

    fn net_flush(&mut self) {
        crate::net::flush()
    }

    fn log(&mut self, line: &str) {
        // The network stack reports from its poll, which must not wait for the host's
        // stdout: a line that does not fit the output window now is dropped.
        channel::log_if_room(line)
    }

    fn heap_in_use(&self) -> Option<usize> {
        Some(crate::heap::usage().0)
    }

    fn wait_until(&mut self, deadline_ns: u64, or_stdin: bool) {
        loop {
            let now = clock::monotonic_ns();
            if now >= deadline_ns || (or_stdin && channel::stdin_ready()) {
                return;
            }
            // Round up so the wait does not end just short of the deadline.
            let micros = (deadline_ns - now).div_ceil(1000);
            channel::wait_us(u32::try_from(micros).unwrap_or(u32::MAX - 1));
        }
    }
}
