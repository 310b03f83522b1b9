//! Exercises every way an app ends, chosen by its first argument:
//! `exit N`, `stderr TEXT` (writes TEXT to stderr and "out" to stdout), `cat` (copies stdin to
//! stdout), `trap` (executes `unreachable`), `spin` (never ends), `env` (prints its
//! environment), `args` (prints argv, one per line), `idle` (prints "ready", then waits for
//! stdin to end, as an idle server would), `spew MIB` (writes MIB MiB to stdout, for the
//! throughput benchmark), `lines N` (prints N short lines, one write each, as a chatty
//! app logs), `echo` (prints "ready", then answers every stdin line with the same line,
//! written in two pieces, until stdin ends), `alloc` (takes memory 1 MiB at a time, writing every page, until
//! none is left, then prints "allocated N MiB" and exits 0), `tty` (prints which of stdin,
//! stdout and stderr are terminals, as `isatty` says), `tick` (prints "ticking", then sleeps
//! 20 ms at a time forever: nearly always inside a system call).
use std::io::{IsTerminal, Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("exit") => {
            let code: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
            std::process::exit(code);
        }
        Some("stderr") => {
            print!("out");
            eprint!("{}", args.get(2).map(String::as_str).unwrap_or("err"));
        }
        Some("cat") => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .expect("read stdin");
            std::io::stdout().write_all(&input).expect("write stdout");
        }
        Some("trap") => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
        }
        Some("spin") => {
            // The readiness line tests wait for before they signal or time out the VM, in
            // two writes: on the built-in VMM the second is queued without an exit, and
            // only the console's timer brings it out while the app computes.
            print!("spin");
            std::io::stdout().flush().expect("flush stdout");
            println!("ning");
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Some("idle") => {
            println!("ready");
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .expect("read stdin");
        }
        Some("spew") => {
            let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
            let chunk = vec![b'x'; 1 << 16];
            let mut out = std::io::stdout().lock();
            for _ in 0..mib * 16 {
                out.write_all(&chunk).expect("write stdout");
            }
        }
        Some("lines") => {
            let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let mut out = std::io::stdout().lock();
            for i in 0..n {
                writeln!(out, "line {i}").expect("write stdout");
            }
        }
        Some("echo") => {
            println!("ready");
            for line in std::io::stdin().lines() {
                let line = line.expect("read stdin");
                let (first, rest) = line.split_at(line.len() / 2);
                print!("{first}");
                std::io::stdout().flush().expect("flush stdout");
                println!("{rest}");
            }
        }
        Some("alloc") => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = Vec::new();
                if block.try_reserve_exact(1 << 20).is_err() || blocks.try_reserve(1).is_err() {
                    break;
                }
                block.resize(1 << 20, 1u8);
                blocks.push(block);
            }
            println!("allocated {} MiB", blocks.len());
        }
        Some("env") => {
            for (k, v) in std::env::vars() {
                println!("{k}={v}");
            }
        }
        Some("args") => {
            for a in &args {
                println!("{a}");
            }
        }
        Some("tick") => {
            println!("ticking");
            loop {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Some("tty") => {
            println!(
                "stdin {} stdout {} stderr {}",
                std::io::stdin().is_terminal(),
                std::io::stdout().is_terminal(),
                std::io::stderr().is_terminal()
            );
        }
        other => {
            eprintln!(
                "usage: exitcode exit N | stderr TEXT | cat | trap | spin | idle | spew MIB | alloc | env | args | tty | tick (got {other:?})"
            );
            std::process::exit(2);
        }
    }
}
