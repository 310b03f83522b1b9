//! Samples in other languages, built from source by their own toolchains, run in a VM and
//! in host reference mode with identical results: C (wasi-libc through `zig cc`), Zig, and
//! AssemblyScript (npm `assemblyscript` with `@assemblyscript/wasi-shim`).

mod common;

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
