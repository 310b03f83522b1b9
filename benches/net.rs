//! Network performance of the HTTP sample, side by side: the built-in VMM, QEMU, and host
//! reference mode. `cargo bench --bench net` prints two tables and draws them as charts
//! (`docs/charts/http.svg`, `docs/charts/bulk.svg`):
//!
//! - requests per second and p50/p99 latency under `wrk` (Debian's package; 32
//!   connections, 2 threads) for `GET /`, with keep-alive and with one request per
//!   connection;
//! - bulk TCP throughput of one connection, each way: `GET /bytes/N` (guest to host) and
//!   `POST /sum` (host to guest; the guest hashes the body).
//!
//! The built-in VMM runs the app twice: interpreted (wasmi, like the other rows) and
//! compiled at pack time (`--engine wasmtime`).
//!
//! `WASMVM_BENCH_SECONDS` sets the wrk duration (default 10), `WASMVM_BENCH_MIB` the bulk
//! size (default 512).
//! Targets (issue #16): built-in ≥ half of host mode's requests/s, p99 < 5 ms at 32
//! connections, both ways; host→guest bulk ≥ 100 MB/s.

#[path = "support/chart.rs"]
mod chart;
#[path = "../tests/common/mod.rs"]
mod common;

use chart::Bar;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

struct Served {
    child: Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        common::terminate(&mut self.child);
    }
}

fn serve(img: &std::path::Path, vmm: &str) -> Served {
    let port = common::free_port();
    let mut cmd = common::wasmvm();
    cmd.args(["run", "--vmm", vmm, "-p", &format!("127.0.0.1:{port}:8080")])
        .arg(img)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let child = common::spawn_ready(cmd, "listening on fd 3");
    Served { child, port }
}

/// Parses wrk's `--latency` report: (requests/s, p50 ms, p99 ms). `close`: one request
/// per connection (`Connection: close`, so the server closes first), else keep-alive. Errors
/// wrk reports are printed with the contender's `label`.
fn wrk(port: u16, seconds: u64, close: bool, label: &str) -> (f64, f64, f64) {
    let mut cmd = Command::new("wrk");
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .args(["-t2", "-c32", "--latency"])
        .arg(format!("-d{seconds}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk is not installed: apt install wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().unwrap() / 1e3
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse().unwrap()
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().unwrap() * 1e3
        } else {
            panic!("wrk latency {v:?}")
        }
    };
    let field = |prefix: &str| -> &str {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk output:\n{text}"))
    };
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if let Some(e) = errors {
        let how = if close {
            "one request per connection"
        } else {
            "keep-alive"
        };
        eprintln!("wrk reported ({label}, {how}): {}", e.trim());
    }
    let rps: f64 = field("Requests/sec:").trim().parse().unwrap();
    (rps, ms(field("50%")), ms(field("99%")))
}

/// MB/s of one `GET /bytes/N` and of one `POST /sum` of N bytes, or what went wrong (a
/// peer that resets the connection under this load, as QEMU's slirp has, fails its row, not
/// the benchmark).
fn bulk(port: u16, bytes: u64) -> Result<(f64, f64), String> {
    let step = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(step("download: connect"))?;
    let t = Instant::now();
    write!(
        s,
        "GET /bytes/{bytes} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )
    .map_err(step("download: request"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).map_err(step("download: read"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let down = total as f64 / t.elapsed().as_secs_f64() / 1e6;
    if total <= bytes {
        return Err(format!("short download: {total} bytes"));
    }

    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(step("upload: connect"))?;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 + 7) as u8).collect();
    let t = Instant::now();
    write!(
        s,
        "POST /sum HTTP/1.1\r\nHost: b\r\nContent-Length: {bytes}\r\n\r\n"
    )
    .map_err(step("upload: request"))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).map_err(step("upload: write"))?;
        left -= n as u64;
    }
    let mut reply = [0u8; 512];
    let n = s.read(&mut reply).map_err(step("upload: reply"))?;
    let up = bytes as f64 / t.elapsed().as_secs_f64() / 1e6;
    if !reply[..n].starts_with(b"HTTP/1.1 200") {
        return Err("upload failed".into());
    }
    Ok((down, up))
}

fn main() {
    let seconds: u64 = std::env::var("WASMVM_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mib: u64 = std::env::var("WASMVM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let dir = common::scratch();
    let img = dir.path().join("http.img");
    common::pack(&common::sample("http"), &img, &["--listen", "8080"]);
    // The same app compiled at pack time: with wasmi, hashing an upload byte by byte bounds
    // host→guest bulk (in host mode too), so only this row shows what the VM's path carries.
    let compiled = dir.path().join("http-compiled.img");
    common::pack(
        &common::sample("http"),
        &compiled,
        &["--listen", "8080", "--engine", "wasmtime"],
    );

    let mut rows = Vec::new();
    let mut closing = Vec::new();
    // Each contender: its image, backend, label in the tables, and the shorter one its
    // chart bars start with.
    for (image, vmm, label, short) in [
        (&img, "builtin", "built-in VMM (passt)", "built-in VMM"),
        (
            &compiled,
            "builtin",
            "built-in VMM (passt), compiled engine",
            "built-in VMM, compiled",
        ),
        (&img, "qemu", "QEMU microvm (slirp)", "QEMU microvm"),
        (
            &img,
            "host",
            "host reference (wasmi + wasi-common)",
            "host mode",
        ),
    ] {
        let served = serve(image, vmm);
        let (rps, p50, p99) = wrk(served.port, seconds, false, label);
        let (close_rps, _, close_p99) = wrk(served.port, seconds, true, label);
        let (down, up) = match bulk(served.port, mib << 20) {
            Ok((down, up)) => (format!("{down:.0}"), format!("{up:.0}")),
            Err(why) => {
                eprintln!("{label}: bulk transfer failed: {why}");
                ("failed".to_string(), "failed".to_string())
            }
        };
        rows.push((vmm, label, rps, p50, p99, down, up, short));
        closing.push((label, close_rps, close_p99));
    }
    let host_rps = rows.iter().find(|r| r.0 == "host").map_or(1.0, |r| r.2);
    let host_close = closing
        .iter()
        .find(|r| r.0.starts_with("host"))
        .map_or(1.0, |r| r.1);
    println!(
        "HTTP sample, wrk -t2 -c32 -d{seconds}s GET /; bulk {mib} MiB over one connection; accel {}",
        common::accel()
    );
    println!(
        "| where | requests/s | vs host | p50 (ms) | p99 (ms) | guest→host MB/s | host→guest MB/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (_, label, rps, p50, p99, down, up, _) in &rows {
        println!(
            "| {label} | {rps:.0} | {:.2}x | {p50:.2} | {p99:.2} | {down} | {up} |",
            rps / host_rps
        );
    }
    println!();
    println!("One request per connection (wrk -H 'Connection: close': the server closes first)");
    println!("| where | requests/s | vs host | p99 (ms) |");
    println!("|---|---|---|---|");
    for (label, rps, p99) in &closing {
        println!(
            "| {label} | {rps:.0} | {:.2}x | {p99:.2} |",
            rps / host_close
        );
    }
    println!();
    let mut requests = Vec::new();
    for ((vmm, _, rps, .., short), (_, close_rps, _)) in rows.iter().zip(&closing) {
        let ours = *vmm == "builtin";
        requests.push(Bar::new(format!("{short}, keep-alive"), *rps / 1e3, ours));
        requests.push(Bar::new(
            format!("{short}, one per connection"),
            close_rps / 1e3,
            ours,
        ));
    }
    chart::write(
        "http.svg",
        "HTTP GET / from 32 wrk connections, thousands of requests/s (longer is better)",
        "k/s",
        &requests,
    );
    let mut bulk = Vec::new();
    for (vmm, _, _, _, _, down, up, short) in &rows {
        for (way, rate) in [("guest→host", down), ("host→guest", up)] {
            if let Ok(rate) = rate.parse::<f64>() {
                bulk.push(Bar::new(format!("{short}, {way}"), rate, *vmm == "builtin"));
            }
        }
    }
    chart::write(
        "bulk.svg",
        &format!("One TCP connection, {mib} MiB each way (MB/s; longer is better)"),
        "MB/s",
        &bulk,
    );
}
