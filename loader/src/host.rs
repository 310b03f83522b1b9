//! Runs a module on the host with the same wasmi version and the same WASI implementation
//! as the guest kernel: the baseline of the interpreter benchmark.

use std::io::{Read, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmi::{Engine, Error, Linker, Module, Store};
use wasmvm_wasi::{Clock, Platform, Stdio, Wasi, link};

/// A [`Platform`] over the host process's own stdio and clocks.
pub struct HostPlatform {
    pub stdin: Box<dyn Read + Send + Sync>,
    pub stdout: Box<dyn Write + Send + Sync>,
    pub stderr: Box<dyn Write + Send + Sync>,
    started: Instant,
}

impl Platform for HostPlatform {
    fn write(&mut self, stream: Stdio, bytes: &[u8]) {
        let out = match stream {
            Stdio::Stdout => &mut *self.stdout,
            Stdio::Stderr => &mut *self.stderr,
        };
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    }

    fn read_stdin(&mut self, buf: &mut [u8]) -> usize {
        self.stdin.read(buf).unwrap_or(0)
    }

    fn now_ns(&mut self, clock: Clock) -> u64 {
        match clock {
            Clock::Realtime => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            _ => self.started.elapsed().as_nanos() as u64,
        }
    }

    fn resolution_ns(&self, _clock: Clock) -> u64 {
        1
    }

    fn random(&mut self, buf: &mut [u8]) {
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    }
}

/// Runs `wasm`'s `_start` with `args` (argv[0] included) and `env`; returns the exit status,
/// or the error that ended it.
pub fn run(
    wasm: &[u8],
    args: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    platform: HostPlatform,
) -> Result<i32, Error> {
    let engine = Engine::new(&link::engine_config());
    let module = Module::new(&engine, wasm)?;
    let mut store = Store::new(&engine, Wasi::new(platform, args, env));
    let mut linker = Linker::new(&engine);
    link::add_to_linker(&mut linker)?;
    let instance = linker.instantiate_and_start(&mut store, &module)?;
    let start = instance.get_typed_func::<(), ()>(&store, "_start")?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => e.i32_exit_status().ok_or(e),
    }
}

impl HostPlatform {
    pub fn new(
        stdin: Box<dyn Read + Send + Sync>,
        stdout: Box<dyn Write + Send + Sync>,
        stderr: Box<dyn Write + Send + Sync>,
    ) -> Self {
        HostPlatform {
            stdin,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }
}
