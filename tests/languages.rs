//! Samples in other languages, built from source by their own toolchains, run in a VM and
//! in host reference mode with identical results: C (wasi-libc through `zig cc`), Zig, and
//! AssemblyScript (npm `assemblyscript` with `@assemblyscript/wasi-shim`). Two reactors
//! (no `_start`; `_initialize`, then an `--invoke`d export) hold both engines to the reactor
//! ABI, `_initialize` exactly once per instance: C (`zig cc -mexec-model=reactor`, whose
//! wasi-libc `_initialize` traps on a second call) and Zig (`-mexec-model=reactor`, whose
//! `_initialize` runs `main` again on a second call).

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Runs `wasm` in the VM and on the host with the same flags; returns the VM's output after
/// checking the two agree byte for byte.
fn both(wasm: &std::path::Path, args: &[&str]) -> std::process::Output {
    let vm = run(wasm, args, b"");
    let mut host_args = vec!["--vmm", "host"];
    host_args.extend_from_slice(args);
    let host = run(wasm, &host_args, b"");
    assert_eq!(
        vm.status.code(),
        host.status.code(),
        "status: {}",
        stderr(&vm)
    );
    assert_eq!(stdout(&vm), stdout(&host));
    assert_eq!(stderr(&vm), stderr(&host));
    vm
}

#[test]
fn c_sample_with_args_env_and_a_packed_file() {
    let dir = scratch();
    let Some(wasm) = zig_sample("c/hello.c", &dir.path().join("hello_c.wasm")) else {
        return;
    };
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("note.txt"), "a packed file\n").unwrap();
    let spec = format!("{}::/data", data.display());
    let o = both(
        &wasm,
        &[
            "--dir",
            &spec,
            "--env",
            "GREETING=hi",
            "--",
            "/data/note.txt",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stdout(&o),
        "Hello from C in a wasmvm VM!\narg 1: /data/note.txt\narg 2: x\nGREETING=hi\na packed file\n"
    );
    assert_eq!(stderr(&o), "C stderr line\n");
}

#[test]
fn zig_sample_exits_7() {
    let dir = scratch();
    let Some(wasm) = zig_sample("zig/hello.zig", &dir.path().join("hello_zig.wasm")) else {
        return;
    };
    let o = both(&wasm, &["--", "a", "b"]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(stdout(&o), "Hello from Zig in a wasmvm VM!\nargc: 3\n");
    assert_eq!(stderr(&o), "Zig stderr line\n");
}

#[test]
fn assemblyscript_sample_exits_5() {
    let dir = scratch();
    let Some(wasm) = assemblyscript_sample(&dir.path().join("hello_as.wasm")) else {
        return;
    };
    let o = both(&wasm, &["--env", "GREETING=hey", "--", "a", "b"]);
    assert_eq!(o.status.code(), Some(5));
    // The shim's console.error writes to fd 1 (in wasmtime too); the VM must match that.
    assert_eq!(
        stdout(&o),
        "Hello from AssemblyScript in a wasmvm VM!\narg 1: a\narg 2: b\nGREETING=hey\n\
         Error: AssemblyScript stderr line\n"
    );
    assert_eq!(stderr(&o), "");
}

/// Builds a reactor sample with zig into `out`: C through wasi-libc's reactor start code
/// (`zig cc -mexec-model=reactor`), Zig through its own (`-mexec-model=reactor`, with
/// `-rdynamic` to export its `export fn`s). `None` if zig is unavailable.
fn zig_reactor(source: &str, out: &Path) -> Option<PathBuf> {
    let flags: &[&str] = match source.ends_with(".c") {
        true => &["-mexec-model=reactor"],
        false => &["-mexec-model=reactor", "-rdynamic"],
    };
    zig_build(source, out, flags)
}

/// Packs the reactor `wasm` for each engine with `--invoke _initialize` and `--invoke answer`
/// and runs every image in the VM and in host reference mode: `_initialize` alone exits 0
/// having printed `init` once; `answer` prints `init` then `answer` and exits 42 (the samples'
/// `answer` returns 41 + the initialiser's runs).
fn reactor_initialises_once(wasm: &Path, init: &str, answer: &str) {
    let dir = scratch();
    for engine in ENGINES {
        for (export, status, out) in [
            ("_initialize", 0, init.to_string()),
            ("answer", 42, format!("{init}{answer}")),
        ] {
            let what = format!("{} --engine {engine} --invoke {export}", wasm.display());
            let img = dir.path().join(format!("{engine}-{export}.img"));
            pack(wasm, &img, &["--engine", engine, "--invoke", export]);
            let o = wasmvm()
                .arg("inspect")
                .arg(&img)
                .arg("--json")
                .output()
                .unwrap();
            assert!(o.status.success(), "{what}: {}", stderr(&o));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["engine"]["name"], engine, "{what}");
            assert_eq!(v["invoke"], export, "{what}");
            let exports = v["module"]["exports"].as_array().unwrap();
            for (name, exported) in [("_initialize", true), ("answer", true), ("_start", false)] {
                assert_eq!(
                    exports.iter().any(|e| e == name),
                    exported,
                    "{what}: `{name}` in {exports:?}"
                );
            }

            let o = both(&img, &[]);
            assert_eq!(o.status.code(), Some(status), "{what}: {}", stderr(&o));
            assert_eq!(stdout(&o), out, "{what}");
            assert_eq!(stderr(&o), "", "{what}");
        }
    }
}

#[test]
fn c_reactor_initialises_once_on_both_engines() {
    let dir = scratch();
    let Some(wasm) = zig_reactor("c/reactor.c", &dir.path().join("reactor_c.wasm")) else {
        return;
    };
    reactor_initialises_once(&wasm, "C reactor constructed\n", "C reactor answers\n");
}

#[test]
fn zig_reactor_initialises_once_on_both_engines() {
    let dir = scratch();
    let Some(wasm) = zig_reactor("zig/reactor.zig", &dir.path().join("reactor_zig.wasm")) else {
        return;
    };
    reactor_initialises_once(&wasm, "Zig reactor initialised\n", "Zig reactor answers\n");
}
