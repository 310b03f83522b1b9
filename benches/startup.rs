//! Cold start: `hello.wasm` from process start to exit, medians of many runs, on every way
//! wasmvm runs it (built-in VMM, QEMU microvm, host reference mode) and with `wasmtime run`
//! or the `wasmi` CLI when they are on PATH. `cargo bench --bench startup`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

const RUNS: usize = 21;

fn median_ms(mut cmd: impl FnMut() -> Command) -> Option<f64> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut c = cmd();
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let t = Instant::now();
        let status = c.status().ok()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.success() {
            return None;
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Some(times[RUNS / 2])
}

fn main() {
    let dir = common::scratch();
    let img = dir.path().join("hello.img");
    let wasm = common::sample("hello");
    common::pack(&wasm, &img, &[]);
    let wasmvm = |vmm: &'static str| {
        let img = img.clone();
        move || {
            let mut c = common::wasmvm();
            c.args(["run", "--vmm", vmm]).arg(&img);
            c
        }
    };
    let mut rows = vec![
        (
            "wasmvm run --vmm builtin (KVM, no QEMU)",
            median_ms(wasmvm("builtin")),
        ),
        (
            "wasmvm run --vmm qemu (QEMU microvm, KVM)",
            median_ms(wasmvm("qemu")),
        ),
        ("wasmvm run --vmm host (no VM)", median_ms(wasmvm("host"))),
    ];
    for (name, tool, args) in [
        ("wasmtime run", "wasmtime", &["run"][..]),
        ("wasmi CLI", "wasmi_cli", &[][..]),
    ] {
        if Command::new(tool).arg("--version").output().is_ok() {
            let wasm = wasm.clone();
            rows.push((
                name,
                median_ms(move || {
                    let mut c = Command::new(tool);
                    c.args(args).arg(&wasm);
                    c
                }),
            ));
        }
    }
    println!("hello.wasm cold start, process start to exit, median of {RUNS} runs");
    println!("| how | ms |");
    println!("|---|---|");
    for (name, ms) in rows {
        match ms {
            Some(ms) => println!("| {name} | {ms:.1} |"),
            None => println!("| {name} | failed |"),
        }
    }
}
