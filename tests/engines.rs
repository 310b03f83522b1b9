//! The two engines: wasmi (interpreted, the default) and wasmtime (Cranelift-compiled at pack
//! time, run natively in the VM). The same apps behave the same on both and on every
//! backend; exception-handling apps choose the compiled engine by themselves; traps end with
//! 134 and the same message; an uncaught exception ends with 1 as `wasmtime run` ends.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A command module whose `_start` body is `body`, with `$print` (writes the bytes at
/// `ptr`/`len` to stdout) and `$exit` (proc_exit) available, and `data` at address 1024.
fn app(body: &str, extra: &str, data: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 1024) "{data}")
          (func $print (param $ptr i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $ptr))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
          {extra}
          (func (export "_start") {body}))"#
    );
    parse(&text)
}

/// The binary module of `text`, or a panic that shows both the error and the text.
fn parse(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Asserts that a run printed exactly `expected` and exited 0, showing its stderr if not.
fn assert_printed(o: &std::process::Output, expected: &str, what: &str) {
    assert_eq!(
        (stdout(o).as_str(), o.status.code()),
        (expected, Some(0)),
        "{what}: {}",
        stderr(o)
    );
}

fn write(dir: &Path, name: &str, wasm: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, wasm).unwrap();
    path
}

/// `wasmvm pack`, returning its output (success or not).
fn pack_output(module: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    wasmvm()
        .arg("pack")
        .arg(module)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Throws from three frames deep and catches in `_start`: prints "caught 42".
fn catches_across_frames() -> Vec<u8> {
    app(
        r#"(local $v i32)
           (block $handler (result i32)
             (try_table (catch $boom $handler)
               (call $a))
             (unreachable))
           (local.set $v)
           (i32.store8 (i32.const 1031) (i32.add (i32.const 48) (i32.div_u (local.get $v) (i32.const 10))))
           (i32.store8 (i32.const 1032) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
           (call $print (i32.const 1024) (i32.const 10))"#,
        r#"(tag $boom (param i32))
           (func $a (call $b))
           (func $b (call $c))
           (func $c (throw $boom (i32.const 42)))"#,
        r#"caught ??\n"#,
    )
}

/// Prints "before", then throws out of `_start`.
fn escapes() -> Vec<u8> {
    app(
        r#"(call $print (i32.const 1024) (i32.const 7))
           (throw $boom)"#,
        "(tag $boom)",
        r#"before\n"#,
    )
}

#[test]
fn exception_handling_apps_choose_the_compiled_engine_and_run_on_every_backend() {
    let dir = scratch();
    let module = write(dir.path(), "catch.wasm", &catches_across_frames());
    let img = dir.path().join("catch.img");
    let o = pack_output(&module, &img, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("using the wasmtime engine: it uses exception handling"),
        "{}",
        stderr(&o)
    );
    let o = wasmvm().arg("inspect").arg(&img).output().unwrap();
    assert!(stdout(&o).contains("engine:         wasmtime (compiled for wasmtime 48.0.11"));
    let o = run(&img, &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "caught 42\n");
    // `run app.wasm` chooses the same way.
    let o = run(&module, &[], b"");
    assert_eq!(stdout(&o), "caught 42\n", "{}", stderr(&o));
    // Forcing the interpreter is refused by name.
    let o = pack_output(&module, &img, &["--engine", "wasmi"]);
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("wasmi cannot run"), "{}", stderr(&o));
}

#[test]
fn an_uncaught_exception_exits_1_like_wasmtime_run() {
    let dir = scratch();
    let module = write(dir.path(), "escape.wasm", &escapes());
    let o = run(&module, &[], b"");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "before\n");
    assert!(
        stderr(&o).contains("the app failed: uncaught wasm exception"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_legacy_exception_encoding_is_refused_by_name() {
    let dir = scratch();
    let legacy = wat::parse_str(
        r#"(module (tag $e) (memory (export "memory") 1)
             (func (export "_start") try throw $e catch $e end))"#,
    )
    .unwrap();
    let module = write(dir.path(), "legacy.wasm", &legacy);
    let o = pack_output(&module, &dir.path().join("legacy.img"), &[]);
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("legacy exception-handling encoding"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_same_app_behaves_the_same_on_both_engines() {
    let dir = scratch();
    let mut images = Vec::new();
    for engine in ["wasmi", "wasmtime"] {
        let img = dir.path().join(format!("exit-{engine}.img"));
        pack(&sample("exitcode"), &img, &["--engine", engine]);
        images.push(img);
    }
    let o = wasmvm().arg("inspect").arg(&images[1]).output().unwrap();
    assert!(
        stdout(&o).contains("engine:         wasmtime"),
        "{}",
        stdout(&o)
    );
    let cases: [(&[&str], &[u8]); 6] = [
        (&["--", "exit", "42"], b""),
        (&["--", "exit", "200"], b""),
        (&["--", "cat"], b"through the compiled engine\n"),
        (&["--", "stderr", "to stderr"], b""),
        (&["--", "args", "a b", "c"], b""),
        (&["--", "trap"], b""),
    ];
    for (args, input) in cases {
        let wasmi = run(&images[0], args, input);
        let wasmtime = run(&images[1], args, input);
        assert_eq!(wasmi.status.code(), wasmtime.status.code(), "{args:?}");
        assert_eq!(wasmi.stdout, wasmtime.stdout, "{args:?}");
        assert_eq!(stderr(&wasmi), stderr(&wasmtime), "{args:?}");
    }
    let o = run(&images[1], &["--", "hello"], b"");
    assert_eq!(o.status.code(), Some(2));
    // `--engine` is a packing option.
    let o = run_on(backends()[0], &images[1], &["--engine", "wasmi"], b"");
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("packing options"), "{}", stderr(&o));
}

#[test]
fn traps_in_compiled_code_exit_134_naming_the_trap() {
    let dir = scratch();
    let cases = [
        (
            "unreachable",
            "(unreachable)",
            "",
            "wasm `unreachable` instruction executed",
        ),
        (
            "oob",
            "(drop (i32.load (i32.const 70000)))",
            "",
            "out of bounds memory access",
        ),
        (
            "div",
            "(drop (i32.div_s (i32.const 1) (i32.sub (i32.const 1) (i32.const 1))))",
            "",
            "integer divide by zero",
        ),
        (
            "recursion",
            "(call $deep (i32.const 0))",
            "(func $deep (param i32) (call $deep (i32.add (local.get 0) (i32.const 1))))",
            "call stack exhausted",
        ),
    ];
    for (name, body, extra, message) in cases {
        let module = write(dir.path(), &format!("{name}.wasm"), &app(body, extra, ""));
        for engine in ["wasmi", "wasmtime"] {
            let img = dir.path().join(format!("{name}-{engine}.img"));
            pack(&module, &img, &["--engine", engine]);
            let o = run(&img, &[], b"");
            assert_eq!(
                o.status.code(),
                Some(134),
                "{name} on {engine}: {}",
                stderr(&o)
            );
            assert!(
                stderr(&o).contains(&format!("app trapped: {message}")),
                "{name} on {engine}: {}",
                stderr(&o)
            );
        }
    }
}

#[test]
fn a_reactor_initialises_once_even_when_initialize_is_invoked() {
    let dir = scratch();
    // `_initialize` traps when it runs a second time.
    let reactor = wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (global $done (mut i32) (i32.const 0))
             (func (export "_initialize")
               (if (global.get $done) (then unreachable))
               (global.set $done (i32.const 1)))
             (func (export "answer") (result i32)
               (if (i32.eqz (global.get $done)) (then unreachable))
               (i32.const 42)))"#,
    )
    .unwrap();
    let module = write(dir.path(), "reactor.wasm", &reactor);
    for engine in ["wasmi", "wasmtime"] {
        for (export, status) in [("_initialize", 0), ("answer", 42)] {
            let img = dir.path().join(format!("reactor-{engine}-{export}.img"));
            pack(&module, &img, &["--engine", engine, "--invoke", export]);
            let o = run(&img, &[], b"");
            assert_eq!(
                o.status.code(),
                Some(status),
                "{export} on {engine}: {}",
                stderr(&o)
            );
        }
    }
}

#[test]
fn an_artifact_for_another_engine_build_is_refused_at_boot() {
    let dir = scratch();
    let img = dir.path().join("hello.img");
    pack(&sample("hello"), &img, &["--engine", "wasmtime"]);
    let mut bytes = std::fs::read(&img).unwrap();
    let id = b"wasmvm settings 1";
    // The last occurrence: the kernel's own copy of the id comes first in the file.
    let at = bytes
        .windows(id.len())
        .rposition(|w| w == id)
        .expect("the engine id is in the manifest");
    bytes[at + id.len() - 1] = b'9';
    std::fs::write(&img, &bytes).unwrap();
    let o = run(&img, &[], b"");
    assert_eq!(o.status.code(), Some(250), "{}", stderr(&o));
    assert!(stderr(&o).contains("wasmvm settings 9"), "{}", stderr(&o));
}

#[test]
fn thousands_of_tiny_writes_all_arrive_on_both_engines() {
    // One byte per fd_write: a frame and a credit return each. The host's credit used to
    // back up behind them until the VM hung (built-in VMM) or lost output (QEMU).
    let dir = scratch();
    let module = write(
        dir.path(),
        "tiny.wasm",
        &app(
            r#"(local $i i32)
               (loop $l
                 (call $print (i32.const 1024) (i32.const 1))
                 (local.set $i (i32.add (local.get $i) (i32.const 1)))
                 (br_if $l (i32.lt_u (local.get $i) (i32.const 20000))))"#,
            "",
            "x",
        ),
    );
    for engine in ENGINES {
        let img = dir.path().join(format!("tiny-{engine}.img"));
        pack(&module, &img, &["--engine", engine]);
        let o = run(&img, &["--timeout", "120s"], b"");
        assert_eq!(o.status.code(), Some(0), "{engine}: {}", stderr(&o));
        assert_eq!(o.stdout.len(), 20000, "{engine}");
        assert!(o.stdout.iter().all(|&b| b == b'x'), "{engine}");
    }
}

#[test]
fn run_time_features_work_on_the_compiled_engine() {
    let dir = scratch();
    // --timeout and SIGTERM stop a spinning app.
    let spin = dir.path().join("spin.img");
    pack(&sample("exitcode"), &spin, &["--engine", "wasmtime"]);
    let o = run(&spin, &["--timeout", "1s", "--", "spin"], b"");
    assert_eq!(o.status.code(), Some(252), "{}", stderr(&o));
    let child = start_ready(
        &["--vmm", backends()[0], "--accel", accel()],
        &spin,
        &["spin"],
        "spinning\n",
    );
    send_signal(&child, libc::SIGTERM);
    assert_eq!(
        wait_with_output_within(child, RUN_LIMIT).status.code(),
        Some(143)
    );

    // A live directory and a persistent volume, through `run app.wasm --engine wasmtime`:
    // the files sample does the same to a fresh directory on either engine.
    let files = sample("files");
    let mut outputs = Vec::new();
    for engine in ENGINES {
        let live = dir.path().join(format!("live-{engine}"));
        std::fs::create_dir(&live).unwrap();
        std::fs::write(live.join("input.txt"), "hello from the host\n").unwrap();
        let spec = format!("{}::/data", live.display());
        let o = run_on(
            backends()[0],
            &files,
            &["--engine", engine, "--dir", &spec],
            b"",
        );
        assert_eq!(o.status.code(), Some(0), "{engine}: {}", stderr(&o));
        outputs.push(o.stdout);
    }
    assert_eq!(outputs[0], outputs[1]);

    let volume = dir.path().join("data.img");
    let o = wasmvm()
        .args(["volume", "create"])
        .arg(&volume)
        .args(["--size", "16M"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let spec = format!("{}::/data", volume.display());
    for count in 1..=2 {
        let o = run_on(
            backends()[0],
            &files,
            &[
                "--engine", "wasmtime", "--volume", &spec, "--", "/data", "counter",
            ],
            b"",
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("count {count}\n"));
    }

    // Unknown imports as stubs.
    let stubbed = wat::parse_str(
        r#"(module
             (import "env" "answer" (func $answer (result i32)))
             (import "env" "answer" (func $again (result i32)))
             (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
             (memory (export "memory") 1)
             (func (export "_start")
               (call $exit (i32.add (i32.add (call $answer) (call $again)) (i32.const 5)))))"#,
    )
    .unwrap();
    let module = write(dir.path(), "stubbed.wasm", &stubbed);
    for engine in ENGINES {
        let img = dir.path().join(format!("stubbed-{engine}.img"));
        pack(&module, &img, &["--engine", engine, "--stub-imports"]);
        let o = run(&img, &[], b"");
        assert_eq!(o.status.code(), Some(5), "{engine}: {}", stderr(&o));
    }
}

/// Checks that every 8-byte word of `[from, to)` is zero, else prints "dirty <what>" and
/// exits 1; `$dirty_then_zero` writes a pattern and then zeros, as an app reusing memory
/// would.
const ZERO_CHECKS: &str = r#"
  (func $zero (param $from i32) (param $to i32) (param $what i32)
    (loop $l
      (if (i64.ne (i64.load (local.get $from)) (i64.const 0))
        (then (call $print (local.get $what) (i32.const 12)) (call $exit (i32.const 1))))
      (local.set $from (i32.add (local.get $from) (i32.const 8)))
      (br_if $l (i32.lt_u (local.get $from) (local.get $to)))))
  (func $dirty_then_zero (param $from i32) (param $len i32)
    (memory.fill (local.get $from) (i32.const 0xaa) (local.get $len))
    (memory.fill (local.get $from) (i32.const 0) (local.get $len)))"#;

#[test]
fn linear_memory_reads_zero_until_written_at_start_and_after_growth_on_both_engines() {
    // The kernel skips zeroing linear memory that nothing has written since boot (the
    // engines zero each range they expose, and RAM starts zero): whatever an app has
    // written must still read back as zero after it zeroes it, and fresh pages, at start
    // or grown, must read zero, down to address 0 (where the kernel's allocator kept a
    // header of its own). 16 MiB at start, then two growths.
    const MIB: u32 = 1 << 20;
    let start = format!(
        r#"(call $zero (i32.const 0) (i32.const 1024) (i32.const 1024))
           (call $zero (i32.const 2048) (i32.const {s}) (i32.const 1024))
           (call $dirty_then_zero (i32.const {h}) (i32.const {h}))
           (call $zero (i32.const {h}) (i32.const {s}) (i32.const 1040))
           (drop (memory.grow (i32.const 256)))
           (call $zero (i32.const {s}) (i32.const {d}) (i32.const 1056))
           (call $dirty_then_zero (i32.const {s}) (i32.const {s}))
           (call $zero (i32.const {s}) (i32.const {d}) (i32.const 1072))
           (drop (memory.grow (i32.const 16)))
           (call $zero (i32.const {d}) (i32.const {e}) (i32.const 1088))
           (call $print (i32.const 1104) (i32.const 5))"#,
        h = 8 * MIB,
        s = 16 * MIB,
        d = 32 * MIB,
        e = 33 * MIB
    );
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 256)
          (data (i32.const 1024) "dirty start\n" "\00\00\00\00" "dirty reuse\n" "\00\00\00\00"
                                 "dirty grown\n" "\00\00\00\00" "dirty again\n" "\00\00\00\00"
                                 "dirty later\n" "\00\00\00\00" "zero\n")
          (func $print (param $ptr i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $ptr))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
          {ZERO_CHECKS}
          (func (export "_start") {start}))"#
    );
    let dir = scratch();
    let module = write(dir.path(), "zero.wasm", &parse(&text));
    for engine in ENGINES {
        let img = dir.path().join(format!("zero-{engine}.img"));
        pack(&module, &img, &["--engine", engine]);
        // Every backend, then 4 KiB guest pages on the built-in VMM.
        let mut variants = vec![vec!["--memory", "128M"]];
        if backends().contains(&"builtin") {
            variants.push(vec![
                "--memory",
                "128M",
                "--vmm",
                "builtin",
                "--no-huge-pages",
            ]);
        }
        for extra in variants {
            let o = run(&img, &extra, b"");
            assert_printed(&o, "zero\n", &format!("{engine} {extra:?}"));
        }
    }
}

#[test]
fn a_memory_too_large_for_the_vm_fails_the_boot_naming_the_sizes_on_both_engines() {
    // 1000 pages (62.5 MiB) at start: more than a 64 MiB VM leaves beside the kernel, well
    // within 128 MiB.
    let dir = scratch();
    let module = write(
        dir.path(),
        "big.wasm",
        &parse(r#"(module (memory (export "memory") 1000) (func (export "_start")))"#),
    );
    for engine in ENGINES {
        let img = dir.path().join(format!("big-{engine}.img"));
        pack(&module, &img, &["--engine", engine]);
        let o = run(&img, &["--memory", "64M"], b"");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(250), "{engine}: {err}");
        assert!(
            err.contains("linear memory needs 62.5 MiB at start")
                && err.contains("run with a larger --memory"),
            "{engine}: {err}"
        );
        assert_eq!(
            err.matches("linear memory needs").count(),
            1,
            "{engine}: {err}"
        );
        let o = run(&img, &["--memory", "128M"], b"");
        assert_eq!(o.status.code(), Some(0), "{engine}: {}", stderr(&o));
    }
}

#[test]
fn a_second_memory_grows_and_reads_zero_beside_the_first_on_both_engines() {
    // Only the app's first memory lies in place; a second one (multi-memory) is the
    // engine's own, which moves as it grows: both must keep what was written and read
    // zero where nothing was.
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (memory $two 2)
          (data (i32.const 1024) "dirty start\n" "\00\00\00\00" "dirty reuse\n" "\00\00\00\00"
                                 "dirty grown\n" "\00\00\00\00" "lost value\n\00" "\00\00\00\00"
                                 "zero\n")
          (func $print (param $ptr i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $ptr))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
          (func $zero2 (param $from i32) (param $to i32) (param $what i32)
            (loop $l
              (if (i64.ne (i64.load $two (local.get $from)) (i64.const 0))
                (then (call $print (local.get $what) (i32.const 12)) (call $exit (i32.const 1))))
              (local.set $from (i32.add (local.get $from) (i32.const 8)))
              (br_if $l (i32.lt_u (local.get $from) (local.get $to)))))
          (func (export "_start")
            (call $zero2 (i32.const 0) (i32.const 131072) (i32.const 1024))
            (i64.store $two (i32.const 65536) (i64.const 0x1122334455667788))
            (memory.fill $two (i32.const 0) (i32.const 0xaa) (i32.const 65536))
            (memory.fill $two (i32.const 0) (i32.const 0) (i32.const 65536))
            (call $zero2 (i32.const 0) (i32.const 65536) (i32.const 1040))
            (drop (memory.grow $two (i32.const 300)))
            (call $zero2 (i32.const 131072) (i32.const {end}) (i32.const 1056))
            (if (i64.ne (i64.load $two (i32.const 65536)) (i64.const 0x1122334455667788))
              (then (call $print (i32.const 1072) (i32.const 11)) (call $exit (i32.const 1))))
            (call $print (i32.const 1088) (i32.const 5))))"#,
        end = 302 * 65536
    );
    let dir = scratch();
    let module = write(dir.path(), "two.wasm", &parse(&text));
    for engine in ENGINES {
        let img = dir.path().join(format!("two-{engine}.img"));
        pack(&module, &img, &["--engine", engine]);
        assert_printed(&run(&img, &[], b""), "zero\n", engine);
    }
}

#[test]
fn an_app_that_throws_gets_its_memory_in_place_and_grows_it() {
    // wasmtime makes the GC heap of an app that throws before the instance's memories; the
    // app's memory, not that heap, must take the VM's room: 32 MiB of growth in a 128 MiB
    // VM, more than the kernel's own share holds.
    let dir = scratch();
    let module = write(
        dir.path(),
        "throwing-grower.wasm",
        &app(
            r#"(block $handler
                 (try_table (catch $boom $handler)
                   (throw $boom))
                 (unreachable))
               (if (i32.eq (memory.grow (i32.const 512)) (i32.const -1))
                 (then (call $print (i32.const 1024) (i32.const 12)) (call $exit (i32.const 1))))
               (i32.store (i32.const 33554432) (i32.const 7))
               (call $print (i32.const 1036) (i32.const 8))"#,
            "(tag $boom)",
            r#"grow failed\ngrown 7\n"#,
        ),
    );
    let img = dir.path().join("throwing-grower.img");
    pack(&module, &img, &[]);
    let o = run(&img, &["--memory", "128M"], b"");
    assert_printed(&o, "grown 7\n", "wasmtime");
}
