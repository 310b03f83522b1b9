//! The micro-VMM benchmark: every number of the micro-VMM issue side by side, in one run,
//! printed as markdown tables (copy them into docs/benchmarks.md).
//!
//! 1. hello cold start, process start to exit, median of many runs: built-in VMM (with
//!    wasmi and with the compiled engine), QEMU microvm, host reference mode, and `wasmtime
//!    run` / the `wasmi` CLI when on PATH (`WASMVM_BENCH_ONLY=start` runs this part alone);
//! 2. host memory per idle VM (RSS and PSS of the VMM process, which includes the guest
//!    pages it touched; for QEMU the QEMU process is added), at its readiness line and
//!    after two seconds of idling (`WASMVM_BENCH_ONLY=idle` runs this part alone);
//! 3. stdout throughput of the guest (256 MiB, start-up subtracted), and short lines per
//!    second (one write each, as a chatty app logs);
//! 4. N concurrent idle VMs: time until all are ready, the host CPU they use idle, and
//!    their memory;
//! 5. where a hello's start goes (`WASMVM_BENCH_ONLY=phases`): the `--verbose` milestones.
//!
//! `cargo bench --bench vmm`; `WASMVM_BENCH_RUNS` (default 21) and `WASMVM_BENCH_VMS`
//! (default 100; the issue's target is for 1000) change the sizes. The start-up, memory,
//! short-line and density tables are also drawn as SVG bar charts into `docs/charts/`
//! (benchmarks.md shows them).

#[path = "support/chart.rs"]
mod chart;
#[path = "../tests/common/mod.rs"]
mod common;

use chart::Bar;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median wall time of `runs` runs of `cmd` to its exit, or `None` if one failed.
fn median_ms(runs: usize, mut cmd: impl FnMut() -> Command) -> Option<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(timed_run(cmd())?.0);
    }
    Some(median(times))
}

/// Runs `cmd` to its exit with no input or output: its wall time in ms and its peak RSS
/// in KiB (`ru_maxrss` from `wait4`), or `None` if it failed.
fn timed_run(mut cmd: Command) -> Option<(f64, f64)> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let t = Instant::now();
    let child = cmd.spawn().ok()?;
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child` is this process's unreaped child; `status` and `usage` are valid for
    // writes. (std never reaps a dropped Child, so there is no second wait.)
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let ok = pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    ok.then_some((ms, usage.ru_maxrss as f64))
}

/// `wasmvm run --vmm VMM TARGET -- ARGS`; the pseudo-VMM `builtin-4k` is the built-in VMM
/// with `--no-huge-pages`.
fn wasmvm_run(vmm: &str, target: &Path, args: &[&str]) -> Command {
    let mut c = common::wasmvm();
    match vmm {
        "builtin-4k" => c.args(["run", "--vmm", "builtin", "--no-huge-pages"]),
        _ => c.args(["run", "--vmm", vmm]),
    };
    c.arg(target).arg("--").args(args);
    c
}

/// Starts an idle VM (prints "ready", then waits for stdin to end) and waits for its
/// readiness line.
fn start_idle(vmm: &str, img: &Path) -> Child {
    start_ready(wasmvm_run(vmm, img, &["idle"]), "idle VM")
}

/// Spawns `cmd` with stdin and stdout piped and waits for its readiness line, "ready".
fn start_ready(mut cmd: Command, what: &str) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n", "{what} did not start");
    child
}

/// A `/proc/PID/{file}` field in kB, summed over `pids`.
fn sum_kb(pids: &[u32], file: &str, field: &str) -> u64 {
    pids.iter().map(|&p| proc_kb(p, file, field)).sum()
}

fn stop(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

/// A `/proc/PID/{file}` field in kB.
fn proc_kb(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The process and its children (QEMU under `wasmvm run --vmm qemu`).
fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; here indices 11 and 12.
    field(11) + field(12)
}

fn main() {
    let runs = env_usize("WASMVM_BENCH_RUNS", 21);
    let vms = env_usize("WASMVM_BENCH_VMS", 100);
    let dir = common::scratch();
    // Memory is measured of an installed copy, like the peers' (see the function).
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    common::use_installed_copy(&bin);
    let hello = common::sample("hello");
    let hello_img = dir.path().join("hello.img");
    common::pack(&hello, &hello_img, &[]);
    let hello_compiled_img = dir.path().join("hello-compiled.img");
    common::pack(&hello, &hello_compiled_img, &["--engine", "wasmtime"]);
    let exitcode_img = dir.path().join("exitcode.img");
    common::pack(&common::sample("exitcode"), &exitcode_img, &[]);
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    let vmms: Vec<&str> = if qemu {
        vec!["builtin", "builtin-4k", "qemu"]
    } else {
        vec!["builtin", "builtin-4k"]
    };

    println!("Machine: {}", machine());
    println!();

    // `WASMVM_BENCH_ONLY=overhead|memory|phases|start|idle|stdout|density` runs one part; by default,
    // all.
    let only = std::env::var("WASMVM_BENCH_ONLY").ok();
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);

    // 0. Image overhead: what an image adds to its module.
    if wanted("overhead") {
        image_overhead(dir.path(), &hello);
    }
    if wanted("memory") {
        usable_memory(&exitcode_img, &common::sample("exitcode"));
        large_initial_memory(dir.path(), runs.min(11));
    }
    if wanted("phases") {
        phases(runs, &hello_img);
    }
    if wanted("stdout") && only.is_some() {
        stdout_rates(&vmms, &exitcode_img);
        return;
    }
    if wanted("idle") && only.is_some() {
        idle_memory(&vmms, &exitcode_img);
        return;
    }
    if wanted("density") && only.is_some() {
        density(vms, &exitcode_img);
        return;
    }
    if wanted("start") && only.is_some() {
        cold_start(runs, &hello, &hello_img, &hello_compiled_img, qemu);
        return;
    }
    if only.is_some() {
        return;
    }

    // 1. Cold start.
    cold_start(runs, &hello, &hello_img, &hello_compiled_img, qemu);

    // 2. Memory per idle VM.
    let memory_bars = idle_memory(&vmms, &exitcode_img);
    chart::write(
        "memory.svg",
        "Host memory of one idle VM (median; smaller is better)",
        "MiB",
        &memory_bars,
    );

    // 3. Stdout.
    stdout_rates(&vmms, &exitcode_img);

    // 4. Density.
    density(vms, &exitcode_img);
}

/// hello.wasm's cold start, process start to exit, and the process's peak RSS, of every
/// contender (`hello_img` packed for wasmi, `hello_compiled_img` for the compiled engine,
/// `hello` for the peers), median of `runs` interleaved runs; draws `start.svg`.
fn cold_start(runs: usize, hello: &Path, hello_img: &Path, hello_compiled_img: &Path, qemu: bool) {
    // One run of each contender per round, so that the host's drift over the
    // minute this takes weighs on all of them alike.
    println!(
        "hello.wasm cold start, process start to exit, and the process's peak RSS, median of {runs} interleaved runs"
    );
    println!();
    println!("| how | ms | peak RSS MiB |");
    println!("|---|---|---|");
    type MakeCommand<'a> = Box<dyn Fn() -> Command + 'a>;
    let mut contenders: Vec<(&str, &str, MakeCommand)> = Vec::new();
    for (name, vmm) in [
        ("wasmvm run (built-in VMM, KVM, no QEMU)", "builtin"),
        ("wasmvm run --no-huge-pages (built-in VMM)", "builtin-4k"),
        ("wasmvm run --vmm qemu (QEMU microvm, KVM)", "qemu"),
        ("wasmvm run --vmm host (no VM)", "host"),
    ] {
        if vmm != "qemu" || qemu {
            contenders.push((name, vmm, Box::new(move || wasmvm_run(vmm, hello_img, &[]))));
        }
        if vmm == "builtin" {
            contenders.push((
                "wasmvm run (built-in VMM, compiled engine)",
                vmm,
                Box::new(move || wasmvm_run(vmm, hello_compiled_img, &[])),
            ));
        }
    }
    let mut missing = Vec::new();
    for (name, tool, args) in [
        ("wasmtime run", "wasmtime", &["run"][..]),
        ("wasmi CLI", "wasmi", &[][..]),
    ] {
        if Command::new(tool).arg("--version").output().is_ok() {
            contenders.push((
                name,
                tool,
                Box::new(move || {
                    let mut c = Command::new(tool);
                    c.args(args).arg(hello);
                    c
                }),
            ));
        } else {
            missing.push(name);
        }
    }
    let mut times: Vec<Option<Vec<(f64, f64)>>> = vec![Some(Vec::new()); contenders.len()];
    for _ in 0..runs {
        for (i, (_, _, command)) in contenders.iter().enumerate() {
            let took = times[i].as_ref().and_then(|_| timed_run(command()));
            match (took, times[i].as_mut()) {
                (Some(run), Some(list)) => list.push(run),
                _ => times[i] = None,
            }
        }
    }
    let mut start_bars = Vec::new();
    for ((name, _, _), list) in contenders.iter().zip(times) {
        let medians = list.map(|runs| {
            let (ms, kib): (Vec<f64>, Vec<f64>) = runs.into_iter().unzip();
            (median(ms), median(kib) / 1024.0)
        });
        start_bars
            .extend(medians.map(|(ms, _)| Bar::new(*name, ms, name.contains("built-in VMM"))));
        print_row(name, medians.map(|(ms, mib)| format!("{ms:.1} | {mib:.1}")));
    }
    for name in missing {
        print_row(name, Some("not on PATH | –".into()));
    }
    println!();
    chart::write(
        "start.svg",
        "hello.wasm cold start, process start to exit (median; shorter is better)",
        "ms",
        &start_bars,
    );
}

/// Stdout throughput (256 MiB in 64 KiB writes) and short lines per second (one write
/// each), on every backend and with the compiled engine. Rounds interleave the
/// contenders, as for the cold start, and each round subtracts that contender's own
/// start-up (`exit 0` of the same image) measured in the same round.
fn stdout_rates(vmms: &[&str], exitcode_img: &Path) {
    let (mib, lines, rounds) = (256usize, 100_000usize, 5);
    let compiled_img = exitcode_img.with_file_name("exitcode-compiled.img");
    common::pack(
        &common::sample("exitcode"),
        &compiled_img,
        &["--engine", "wasmtime"],
    );
    let mut contenders: Vec<(String, &str, &Path)> = vmms
        .iter()
        .copied()
        .chain(["host"])
        .map(|vmm| (vmm.to_string(), vmm, exitcode_img))
        .collect();
    contenders.push(("builtin, compiled engine".into(), "builtin", &compiled_img));
    let (mib_arg, lines_arg) = (mib.to_string(), lines.to_string());
    let once = |vmm: &str, img: &Path, args: &[&str]| median_ms(1, || wasmvm_run(vmm, img, args));
    // Per contender: seconds of spew and of lines, start-up subtracted, one per round.
    let mut spew: Vec<Option<Vec<f64>>> = vec![Some(Vec::new()); contenders.len()];
    let mut line: Vec<Option<Vec<f64>>> = vec![Some(Vec::new()); contenders.len()];
    for _ in 0..rounds {
        for (i, (_, vmm, img)) in contenders.iter().enumerate() {
            let start = once(vmm, img, &["exit", "0"]);
            let s = once(vmm, img, &["spew", &mib_arg]);
            let l = once(vmm, img, &["lines", &lines_arg]);
            for (list, took) in [(&mut spew[i], s), (&mut line[i], l)] {
                match (start.zip(took), list.as_mut()) {
                    (Some((start, took)), Some(l)) if took > start => l.push((took - start) / 1e3),
                    _ => *list = None,
                }
            }
        }
    }
    println!(
        "Guest stdout: {mib} MiB in 64 KiB writes, and {lines} lines of 7-11 bytes (one write each), to /dev/null; each run's start-up subtracted; median of {rounds} interleaved rounds"
    );
    println!();
    println!("| backend | MB/s | lines/s |");
    println!("|---|---|---|");
    let mut line_bars = Vec::new();
    for (i, (name, _, _)) in contenders.iter().enumerate() {
        let rate = spew[i]
            .clone()
            .map(|v| format!("{:.0}", (mib << 20) as f64 / median(v) / 1e6));
        let per_s = line[i].clone().map(|v| lines as f64 / median(v));
        if let Some(r) = per_s {
            line_bars.push(Bar::new(name.clone(), r / 1e3, name.starts_with("builtin")));
        }
        println!(
            "| {name} | {} | {} |",
            rate.unwrap_or_else(|| "failed".into()),
            per_s.map_or_else(|| "failed".into(), |r| format!("{r:.0}"))
        );
    }
    println!();
    chart::write(
        "lines.svg",
        "Short lines written per second (thousands; longer is better)",
        "k lines/s",
        &line_bars,
    );
}

/// How long a VM idles before its memory is read: the built-in VMM gives back the zero
/// pages of its huge pages once the guest has waited a second with nothing to do.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// Host memory of one idle VM per backend (median of 5): RSS at the readiness line, then
/// RSS and PSS after [`IDLE_SETTLE`]. Returns the chart's bars.
fn idle_memory(vmms: &[&str], exitcode_img: &Path) -> Vec<Bar> {
    println!(
        "Host memory of one idle VM (median of 5; VMM process incl. guest pages touched; idle: {} s after its readiness line)",
        IDLE_SETTLE.as_secs_f64()
    );
    println!();
    println!("| backend | RSS MiB at ready | RSS MiB idle | PSS MiB idle |");
    println!("|---|---|---|---|");
    let mut bars = Vec::new();
    for vmm in vmms {
        let (mut ready, mut rss, mut pss) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let child = start_idle(vmm, exitcode_img);
            let pids = family(child.id());
            ready.push(sum_kb(&pids, "status", "VmRSS:") as f64);
            std::thread::sleep(IDLE_SETTLE);
            rss.push(sum_kb(&pids, "status", "VmRSS:") as f64);
            pss.push(sum_kb(&pids, "smaps_rollup", "Pss:") as f64);
            stop(child);
        }
        let mib = |v: Vec<f64>| median(v) / 1024.0;
        let (ready, rss, pss) = (mib(ready), mib(rss), mib(pss));
        println!("| {vmm} | {ready:.1} | {rss:.1} | {pss:.1} |");
        let ours = vmm.starts_with("builtin");
        bars.push(Bar::new(format!("{vmm}: RSS"), rss, ours));
        bars.push(Bar::new(format!("{vmm}: PSS"), pss, ours));
    }
    println!();
    bars
}

/// `vms` idle VMs at once: time until all are ready, host CPU while they idle, memory;
/// draws `density.svg` and `density-memory.svg`.
fn density(vms: usize, exitcode_img: &Path) {
    let (mut ready_bars, mut memory_bars) = (Vec::new(), Vec::new());
    for (vmm, label) in [
        ("builtin", "built-in VMM"),
        ("builtin-4k", "built-in VMM --no-huge-pages"),
    ] {
        let (ready, pss_mib) = density_of(vms, exitcode_img, vmm);
        ready_bars.push(Bar::new(label, ready.as_secs_f64(), true));
        memory_bars.push(Bar::new(label, pss_mib / vms as f64, true));
    }
    chart::write(
        "density.svg",
        &format!("{vms} idle VMs started at once: seconds until all are ready (shorter is better)"),
        "s",
        &ready_bars,
    );
    chart::write(
        "density-memory.svg",
        &format!("Host memory per VM with {vms} idle VMs: PSS (smaller is better)"),
        "MiB",
        &memory_bars,
    );
}

/// One [`density`] run on `vmm`: prints its table, returns the time until every VM was
/// ready and their total PSS in MiB once idle.
fn density_of(vms: usize, exitcode_img: &Path, vmm: &str) -> (Duration, f64) {
    println!("{vms} concurrent idle VMs ({vmm})");
    println!();
    let t = Instant::now();
    let children: Vec<Child> = (0..vms)
        .map(|_| {
            wasmvm_run(vmm, exitcode_img, &["idle"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start wasmvm")
        })
        .collect();
    let mut children: Vec<Child> = children
        .into_iter()
        .map(|mut child| {
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "ready\n");
            child
        })
        .collect();
    let all_ready = t.elapsed();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let ticks = |pids: &[u32]| pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let window = Duration::from_secs(5);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // The share of all cores the VMs use over one window from now.
    let cpu = || {
        let before = ticks(&pids);
        let t = Instant::now();
        std::thread::sleep(window);
        let used = ticks(&pids) - before;
        used as f64 / hz / t.elapsed().as_secs_f64() / cores * 100.0
    };
    // The first window holds each VM's one idle trim (a second after its last input, see
    // design.md): the VMs that became ready last do theirs in it. The second is idling.
    let settling = cpu();
    let idle = cpu();
    let rss = sum_kb(&pids, "status", "VmRSS:");
    let pss = sum_kb(&pids, "smaps_rollup", "Pss:");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| time until all {vms} printed their readiness line | {:.2} s |",
        all_ready.as_secs_f64()
    );
    println!(
        "| host CPU in the {:.0} s after that (their idle trims; all {cores:.0} cores) | {settling:.2} % |",
        window.as_secs_f64()
    );
    println!(
        "| host CPU while all sit idle (the next {:.0} s) | {idle:.2} % |",
        window.as_secs_f64()
    );
    println!(
        "| total RSS / PSS | {:.0} MiB / {:.0} MiB |",
        rss as f64 / 1024.0,
        pss as f64 / 1024.0
    );
    println!();
    for child in children.drain(..) {
        stop(child);
    }
    (all_ready, pss as f64 / 1024.0)
}

/// Where a hello's start goes: the milestones `wasmvm run --verbose` prints (the host's
/// times from the start of the run, the guest's lines stamped on arrival), medians of
/// `runs`. Verbose runs send the log lines, which quiet runs do not (a few exits more).
fn phases(runs: usize, img: &Path) {
    const MILESTONES: [(&str, &str); 4] = [
        (
            "VM built (memory filled, KVM VM and vCPU created)",
            "host: VM built after ",
        ),
        (
            "kernel ready (devices up, run configuration read)",
            "kernel: ready",
        ),
        (
            "module compiled and instantiated, `_start` called",
            "calling _start",
        ),
        ("exit record handled, VM torn down", "host: VM ended after "),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); MILESTONES.len() + 1];
    for _ in 0..runs {
        let t = Instant::now();
        let out = common::wasmvm()
            .args(["run", "-v"])
            .arg(img)
            .stdin(Stdio::null())
            .output()
            .expect("run wasmvm");
        let whole = t.elapsed().as_secs_f64() * 1e3;
        assert!(out.status.success(), "a verbose hello failed");
        let log = String::from_utf8_lossy(&out.stderr);
        for (i, (_, marker)) in MILESTONES.iter().enumerate() {
            let line = log
                .lines()
                .find(|l| l.contains(marker))
                .unwrap_or_else(|| panic!("no `{marker}` line in:\n{log}"));
            times[i].push(milestone_ms(line));
        }
        times[MILESTONES.len()].push(whole);
    }
    println!("Where hello's start goes (`wasmvm run -v`, median of {runs} runs)");
    println!();
    println!("| milestone | ms after the run started |");
    println!("|---|---|");
    for (i, (name, _)) in MILESTONES.iter().enumerate() {
        println!("| {name} | {:.1} |", median(times[i].clone()));
    }
    println!(
        "| process exit, as its parent sees it (from spawn) | {:.1} |",
        median(times[MILESTONES.len()].clone())
    );
    println!();
}

/// The milliseconds in a `--verbose` line: `after X ms` (host lines) or `(host +X ms)`
/// (guest lines, stamped on arrival).
fn milestone_ms(line: &str) -> f64 {
    let tail = line
        .rsplit_once("host +")
        .or_else(|| line.rsplit_once("after "))
        .map(|(_, t)| t)
        .unwrap_or_default();
    tail.split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in `{line}`"))
}

/// A row of the cold-start table: `value` holds both columns.
fn print_row(name: &str, value: Option<String>) {
    println!(
        "| {name} | {} |",
        value.unwrap_or_else(|| "failed | –".into())
    );
}

/// CPU model, core count and memory, for the record.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = proc_kb_total("MemTotal:") as f64 / (1 << 20) as f64;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

fn proc_kb_total(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Image bytes minus the module's (and, for the compiled engine, minus the artifact's): the
/// kernel and the bundle's own structures, per engine.
fn image_overhead(dir: &Path, module: &Path) {
    println!(
        "Image overhead (hello.wasm: image bytes minus the module, and minus the compiled artifact)"
    );
    println!();
    println!("| engine | image | overhead | target |");
    println!("|---|---|---|---|");
    let module_len = std::fs::metadata(module).unwrap().len();
    for (engine, target) in [("wasmi", 2.0), ("wasmtime", 1.25)] {
        let img = dir.join(format!("overhead-{engine}.img"));
        common::pack(module, &img, &["--engine", engine]);
        let o = common::wasmvm()
            .args(["inspect", "--json"])
            .arg(&img)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let image = info["image_size"].as_u64().unwrap();
        let artifact = info["engine"]["artifact_size"].as_u64().unwrap_or(0);
        let overhead = (image - module_len - artifact) as f64 / f64::from(1 << 20);
        println!(
            "| {engine} | {:.2} MiB | {overhead:.2} MiB | ≤ {target} MiB |",
            image as f64 / f64::from(1 << 20)
        );
    }
    println!();
}

/// Memory that users give is memory apps get: `exitcode alloc` takes 1 MiB blocks until
/// none is left; the share of `--memory` it got, on the built-in VMM with each engine, and
/// with `wasmtime run` capped at the same size (`-W max-memory-size`) when it is on PATH.
fn usable_memory(exitcode_img: &Path, exitcode_wasm: &Path) {
    let allocated = |out: std::process::Output| -> Option<u64> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("allocated "))
            .and_then(|l| l.trim_end_matches(" MiB").parse().ok())
    };
    let compiled_img = exitcode_img.with_file_name("exitcode-usable-compiled.img");
    common::pack(exitcode_wasm, &compiled_img, &["--engine", "wasmtime"]);
    let wasmtime = Command::new("wasmtime").arg("--version").output().is_ok();
    println!("Usable memory: `exitcode alloc` (1 MiB blocks until none is left)");
    println!();
    println!(
        "| --memory | built-in VMM MiB | share | compiled engine MiB | share | wasmtime run (capped) MiB | share |"
    );
    println!("|---|---|---|---|---|---|---|");
    for mib in [64u64, 256, 1024] {
        let vm = |img: &Path| {
            common::wasmvm()
                .args(["run", "--memory", &format!("{mib}M")])
                .arg(img)
                .args(["--", "alloc"])
                .output()
                .ok()
                .and_then(allocated)
        };
        let peer = wasmtime
            .then(|| {
                Command::new("wasmtime")
                    .args(["run", "-W", &format!("max-memory-size={}", mib << 20)])
                    .arg(exitcode_wasm)
                    .arg("alloc")
                    .output()
                    .ok()
                    .and_then(allocated)
            })
            .flatten();
        let cell = |v: Option<u64>| match v {
            Some(v) => format!("{v} | {:.0} %", v as f64 * 100.0 / mib as f64),
            None => "n/a | ".into(),
        };
        println!(
            "| {mib}M | {} | {} | {} |",
            cell(vm(exitcode_img)),
            cell(vm(&compiled_img)),
            cell(peer)
        );
    }
    println!();
}

/// An app whose module asks for 64 MiB of linear memory at start and uses a few bytes of
/// it (prints "ready", then reads stdin to its end): start to exit with stdin empty, and
/// the memory of one such VM idling, against `wasmtime run`, which maps linear memory
/// lazily. Interleaved rounds, as for the cold start.
fn large_initial_memory(dir: &Path, runs: usize) {
    let module = dir.join("initial64.wasm");
    let text = r#"(module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_read"
        (func $fd_read (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1024)
      (data (i32.const 16) "ready\n")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16))
        (i32.store (i32.const 4) (i32.const 6))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (loop $more
          (i32.store (i32.const 0) (i32.const 64))
          (i32.store (i32.const 4) (i32.const 64))
          (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
          (br_if $more (i32.load (i32.const 8))))))"#;
    std::fs::write(&module, wat::parse_str(text).unwrap()).unwrap();
    let img = dir.join("initial64.img");
    let compiled = dir.join("initial64-compiled.img");
    common::pack(&module, &img, &[]);
    common::pack(&module, &compiled, &["--engine", "wasmtime"]);
    type MakeCommand<'a> = Box<dyn Fn() -> Command + 'a>;
    let mut contenders: Vec<(&str, MakeCommand)> = vec![
        ("wasmvm run", Box::new(|| wasmvm_run("builtin", &img, &[]))),
        (
            "wasmvm run --no-huge-pages",
            Box::new(|| wasmvm_run("builtin-4k", &img, &[])),
        ),
        (
            "wasmvm run, compiled engine",
            Box::new(|| wasmvm_run("builtin", &compiled, &[])),
        ),
    ];
    if Command::new("wasmtime").arg("--version").output().is_ok() {
        contenders.push((
            "wasmtime run",
            Box::new(|| {
                let mut c = Command::new("wasmtime");
                c.arg("run").arg(&module);
                c
            }),
        ));
    }
    println!(
        "A module asking for 64 MiB at start (uses a few bytes): start to exit, median of {runs}; one idle ({} s after its readiness line), median of 5",
        IDLE_SETTLE.as_secs_f64()
    );
    println!();
    println!("| how | start ms | idle RSS MiB |");
    println!("|---|---|---|");
    let mut times = vec![Vec::new(); contenders.len()];
    for _ in 0..runs {
        for (i, (_, command)) in contenders.iter().enumerate() {
            times[i].extend(median_ms(1, command));
        }
    }
    for ((name, command), times) in contenders.iter().zip(times) {
        let mut rss = Vec::new();
        for _ in 0..5 {
            let child = start_ready(command(), &format!("{name}: the idle app"));
            std::thread::sleep(IDLE_SETTLE);
            rss.push(sum_kb(&family(child.id()), "status", "VmRSS:") as f64);
            stop(child);
        }
        let start = (times.len() == runs).then(|| median(times));
        println!(
            "| {name} | {} | {:.1} |",
            start.map_or("failed".into(), |ms| format!("{ms:.1}")),
            median(rss) / 1024.0
        );
    }
    println!();
}
