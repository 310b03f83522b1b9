//! Boots real images on KVM (or TCG where KVM is missing and not required) through the CLI
//! and checks what the app and the user see.

mod common;

use common::*;

#[test]
fn hello_prints_its_greeting() {
    let dir = scratch();
    let img = dir.path().join("hello.img");
    pack(&sample("hello"), &img, &[]);
    let o = run(&img, &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello from a wasmvm VM!\n");
    assert_eq!(stderr(&o), "");
}

#[test]
fn exit_statuses_pass_through() {
    let dir = scratch();
    let img = dir.path().join("exit.img");
    pack(&sample("exitcode"), &img, &[]);
    for code in ["0", "1", "42", "125"] {
        let o = run(&img, &["--", "exit", code], b"");
        assert_eq!(
            o.status.code(),
            Some(code.parse().unwrap()),
            "{}",
            stderr(&o)
        );
        assert_eq!(stderr(&o), "");
    }
    // Like wasmtime: a status outside [0, 126) is an error reported as 1.
    let o = run(&img, &["--", "exit", "200"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("exit with invalid exit status outside of [0..126)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_trap_exits_134_with_its_message() {
    let o = run(&sample("exitcode"), &["--", "trap"], b"");
    assert_eq!(o.status.code(), Some(134));
    assert!(
        stderr(&o).contains("app trapped: wasm `unreachable` instruction executed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn args_and_env_round_trip_and_run_time_overrides_win() {
    let dir = scratch();
    let img = dir.path().join("args.img");
    pack(
        &sample("exitcode"),
        &img,
        &[
            "--env",
            "A=packed",
            "--env",
            "B=kept",
            "--",
            "args",
            "packed-arg",
        ],
    );
    let o = run(&img, &[], b"");
    assert_eq!(stdout(&o), "exitcode.wasm\nargs\npacked-arg\n");

    let o = run(&img, &["--argv0", "renamed", "--", "args", "x y", "ü"], b"");
    assert_eq!(stdout(&o), "renamed\nargs\nx y\nü\n");

    let o = run(
        &img,
        &["--env", "A=run", "--env", "C=new", "--", "env"],
        b"",
    );
    let mut vars: Vec<_> = stdout(&o).lines().map(String::from).collect();
    vars.sort();
    assert_eq!(vars, ["A=run", "B=kept", "C=new"]);
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let o = run(&sample("exitcode"), &["--", "stderr", "to-stderr"], b"");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "out");
    assert_eq!(stderr(&o), "to-stderr");
}

#[test]
fn stdin_is_forwarded_intact_with_its_end_of_file() {
    let o = run(&sample("exitcode"), &["--", "cat"], b"");
    assert_eq!((o.status.code(), o.stdout.len()), (Some(0), 0));

    // Several MB of binary data: every byte arrives, in order, through the flow-controlled
    // channel in both directions.
    let mut data = vec![0u8; 3 << 20];
    let mut x: u32 = 12345;
    for b in data.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    let o = run(&sample("exitcode"), &["--", "cat"], &data);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        o.stdout == data,
        "stdin copy differs ({} vs {} bytes)",
        o.stdout.len(),
        data.len()
    );
}

#[test]
fn a_timeout_stops_the_vm_with_status_252() {
    // `spin` writes its line in two writes, then computes: on the built-in VMM the second
    // is queued without an exit, and only the console's timer takes it out.
    let o = run(&sample("exitcode"), &["--timeout", "1s", "--", "spin"], b"");
    assert_eq!(o.status.code(), Some(252), "{}", stderr(&o));
    assert_eq!(stdout(&o), "spinning\n");
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    // Host mode too: the interpreter cannot be preempted, but the run ends all the same.
    let o = run_on(
        "host",
        &sample("exitcode"),
        &["--timeout", "1s", "--", "spin"],
        b"",
    );
    assert_eq!(o.status.code(), Some(252), "host: {}", stderr(&o));
    assert_eq!(stdout(&o), "spinning\n", "host");
}

#[test]
fn a_signal_stops_an_app_sleeping_in_a_system_call() {
    // `tick` sleeps 20 ms at a time: in host mode the stop nearly always meets it inside
    // `poll_oneoff`, whose return is then refused, and the app ends within the grace.
    for vmm in backends_and_host() {
        let mut app = start_ready(
            &["--vmm", vmm, "--accel", accel()],
            &sample("exitcode"),
            &["tick"],
            "ticking",
        );
        let stdin = app.stdin.take();
        send_signal(&app, libc::SIGTERM);
        let o = wait_with_output_within(app, RUN_LIMIT);
        drop(stdin);
        assert_eq!(o.status.code(), Some(143), "{vmm}: {}", stderr(&o));
        assert!(stderr(&o).contains("terminated"), "{vmm}: {}", stderr(&o));
    }
}

#[test]
fn a_signal_ends_a_host_mode_app_waiting_for_input_and_removes_its_scratch() {
    let dir = scratch();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let img = dir.path().join("files.img");
    // A packed directory: host mode writes it out to a scratch directory.
    let packed = dir.path().join("packed");
    std::fs::create_dir(&packed).unwrap();
    std::fs::write(packed.join("a.txt"), "a").unwrap();
    pack(
        &sample("exitcode"),
        &img,
        &["--dir", &format!("{}::/packed", packed.display())],
    );
    for (signal, status) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGHUP, 129),
    ] {
        let mut cmd = wasmvm();
        cmd.env("TMPDIR", &tmp)
            .args(["run", "--vmm", "host"])
            .arg(&img)
            .args(["--", "idle"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // Blocked in a read of its stdin, held open until the end: only the signal can
        // end it.
        let mut child = spawn_ready(cmd, "ready");
        let stdin = child.stdin.take();
        send_signal(&child, signal);
        let o = wait_with_output_within(child, RUN_LIMIT);
        drop(stdin);
        assert_eq!(o.status.code(), Some(status), "{signal}: {}", stderr(&o));
        assert!(stderr(&o).contains("stopped"), "{signal}: {}", stderr(&o));
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
        assert!(left.is_empty(), "{signal}: left behind: {left:?}");
    }
    // A deadline that passes while the packed files are still being written out: the
    // writing finishes first (it runs no app code), then the run ends and removes them.
    // stdin stays open, so the app cannot end by itself if setup beats the deadline.
    let mut cmd = wasmvm();
    cmd.env("TMPDIR", &tmp)
        .args(["run", "--vmm", "host", "--timeout", "1ms"])
        .arg(&img)
        .args(["--", "idle"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdin = child.stdin.take();
    let o = wait_with_output_within(child, RUN_LIMIT);
    drop(stdin);
    assert_eq!(o.status.code(), Some(252), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "timeout: left behind: {left:?}");
}

#[test]
fn sigterm_sigint_and_sighup_stop_the_vm() {
    for vmm in backends() {
        for (signal, status) in [
            (libc::SIGTERM, 143),
            (libc::SIGINT, 130),
            (libc::SIGHUP, 129),
        ] {
            let o = spin_then_signal(&["--vmm", vmm, "--accel", accel()], signal);
            assert_eq!(o.status.code(), Some(status), "{vmm}: {}", stderr(&o));
        }
    }
    // Host mode's app computes in this process, without a host call to stop it at: the run
    // ends anyway, with the same statuses.
    for (signal, status) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGHUP, 129),
    ] {
        let o = spin_then_signal(&["--vmm", "host"], signal);
        assert_eq!(o.status.code(), Some(status), "host: {}", stderr(&o));
    }
}

/// Starts `wasmvm run [vmm_args] exitcode.wasm -- spin`, waits for its readiness line, sends
/// `signal` (a `kill` name) and returns how it ended.
fn spin_then_signal(vmm_args: &[&str], signal: libc::c_int) -> std::process::Output {
    let child = start_ready(vmm_args, &sample("exitcode"), &["spin"], "spinning\n");
    send_signal(&child, signal);
    wait_with_output_within(child, RUN_LIMIT)
}

#[test]
fn a_guest_crash_is_reported_as_such() {
    // Overwrite the kernel's PVH entry with `ud2`: with no IDT the CPU triple-faults at once.
    let dir = scratch();
    let img = dir.path().join("crash.img");
    pack(&sample("hello"), &img, &[]);
    patch_entry_with_ud2(&img);
    // Each backend says what it knows of the crash, so only the common part is compared.
    for vmm in backends() {
        let o = run_on(vmm, &img, &[], b"");
        assert_eq!(o.status.code(), Some(251), "{vmm}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("guest crashed"),
            "{vmm}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn arguments_that_are_not_utf8_reach_a_vm_as_bytes_and_host_mode_refuses_them() {
    use std::os::unix::ffi::OsStrExt;
    let arg = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let args = |vmm: &str| {
        let mut cmd = wasmvm();
        cmd.args(["run", "--vmm", vmm, "--accel", accel()])
            .arg(sample("exitcode"))
            .args(["--", "args"])
            .arg(arg);
        output_within(&mut cmd, RUN_LIMIT)
    };
    // The Rust app's `std::env::args` panics on them: the bytes arrived unchanged.
    for vmm in backends() {
        let o = args(vmm);
        assert_eq!(o.status.code(), Some(134), "{vmm}: {}", stderr(&o));
        assert!(stderr(&o).contains("\\xE9"), "{vmm}: {}", stderr(&o));
    }
    // wasi-common takes only strings: refused, not changed into something else.
    let o = args("host");
    assert_eq!(o.status.code(), Some(253), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the argument \"caf\u{fffd}\" is not UTF-8"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
}

#[test]
fn an_entry_point_outside_the_image_is_refused_before_boot() {
    if !builtin_vmm_usable() {
        eprintln!("note: no built-in VMM here; skipped");
        return;
    }
    let dir = scratch();
    let img = dir.path().join("entry.img");
    pack(&sample("hello"), &img, &[]);
    let mut bytes = std::fs::read(&img).unwrap();
    // The direct entry's note (wasmvm_abi::direct): namesz 7, descsz 8, type 3, "wasmvm".
    let note: Vec<u8> = [7u32, 8, 3]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(*b"wasmvm\0\0")
        .collect();
    let at = bytes
        .windows(note.len())
        .position(|w| w == note.as_slice())
        .expect("the direct entry note")
        + note.len();
    // In the first 2 MiB, which the kernel (linked at 2 MiB) never loads.
    bytes[at..at + 8].copy_from_slice(&0x1000u64.to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let o = run_on("builtin", &img, &[], b"");
    assert_eq!(o.status.code(), Some(253), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("entry point 0x1000 lies outside the code it loads"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_bare_qemu_boots_the_image_and_ends() {
    // The image is an ordinary PVH kernel: plain QEMU boots it with no wasmvm on the host,
    // output on the serial port (TCG, where CPL-3 serial I/O works everywhere).
    let dir = scratch();
    let img = dir.path().join("hello.img");
    pack(&sample("hello"), &img, &[]);
    let o = bare_qemu(&img);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Hello from a wasmvm VM!"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn the_kernel_refuses_a_bundle_of_another_abi_version() {
    let dir = scratch();
    let img = dir.path().join("v99.img");
    pack(&sample("hello"), &img, &[]);
    let mut bytes = std::fs::read(&img).unwrap();
    let magic = bytes.windows(8).rposition(|w| w == b"WASMVMB\0").unwrap();
    bytes[magic + 8] = 99;
    std::fs::write(&img, &bytes).unwrap();
    // The host refuses it first...
    let o = run(&img, &[], b"");
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("ABI version 99"), "{}", stderr(&o));
    // ...and so does the kernel, booted without the host's check.
    let o = bare_qemu(&img);
    assert!(stdout(&o).contains("ABI version 99"), "{}", stdout(&o));
}

#[test]
fn run_packs_a_module_in_memory() {
    let o = run(&sample("hello"), &["--env", "GREETING=hey", "--", "a"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Hello from a wasmvm VM!\nargs: [\"a\"]\nGREETING=hey\n"
    );
}

#[test]
fn verbose_prints_boot_timings() {
    for vmm in backends() {
        let o = run_on(vmm, &sample("hello"), &["--verbose"], b"");
        assert_eq!(o.status.code(), Some(0));
        let err = stderr(&o);
        let started = match *vmm {
            "qemu" => "[wasmvm] host: QEMU started after",
            _ => "[wasmvm] host: VM built after",
        };
        assert!(err.contains(started), "{err}");
        assert!(err.contains("[wasmvm] guest: kernel: ready"), "{err}");
        assert!(err.contains("module compiled and instantiated in"), "{err}");
        assert!(err.contains("[wasmvm] host: VM ended after"), "{err}");
    }
}

#[test]
fn a_run_configuration_too_big_for_guest_memory_is_refused_by_size() {
    if !builtin_vmm_usable() {
        return;
    }
    let dir = scratch();
    let env = dir.path().join("big.env");
    std::fs::write(&env, format!("BIG={}\n", "x".repeat(14 << 20))).unwrap();
    let env = env.to_str().unwrap();
    // A packed image: its environment then travels in the run configuration (a module run
    // directly is packed with it, and the bundle is what would not fit).
    let img = dir.path().join("hello.img");
    pack(&sample("hello"), &img, &[]);
    let o = run(
        &img,
        &["--vmm", "builtin", "--memory", "16M", "--env-file", env],
        b"",
    );
    assert_eq!(o.status.code(), Some(253), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert!(
        err.contains("the run configuration") && err.contains("does not fit in guest memory"),
        "{err}"
    );
    assert_eq!(err.matches("error").count(), 1, "said once: {err}");
    // Given what it asks for, the same run works.
    let needed = err
        .split("--memory ")
        .nth(1)
        .and_then(|t| t.split('M').next())
        .expect("the message names the --memory it needs");
    let memory = format!("{needed}M");
    let o = run(
        &img,
        &["--vmm", "builtin", "--memory", &memory, "--env-file", env],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_kernel_out_of_memory_says_so_and_what_to_do() {
    if !builtin_vmm_usable() {
        return;
    }
    // 4 MB of environment fits in 16 MiB of RAM, but not the kernel's copies of it.
    let dir = scratch();
    let env = dir.path().join("big.env");
    std::fs::write(&env, format!("BIG={}\n", "x".repeat(4 << 20))).unwrap();
    let img = dir.path().join("hello.img");
    pack(&sample("hello"), &img, &[]);
    let env = env.to_str().unwrap();
    let o = run(
        &img,
        &["--vmm", "builtin", "--memory", "16M", "--env-file", env],
        b"",
    );
    assert_eq!(o.status.code(), Some(250), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("out of memory") && err.contains("run with a larger --memory"),
        "{err}"
    );
    assert!(
        !err.contains("panicked at"),
        "a source location is no help: {err}"
    );
    assert_eq!(err.lines().count(), 1, "said once: {err}");
}

#[test]
fn an_environment_of_200000_variables_reaches_the_app() {
    if !builtin_vmm_usable() {
        return;
    }
    // Set one by one, with a pass over the list each, these took minutes (CLI and kernel).
    let dir = scratch();
    let env = dir.path().join("many.env");
    let mut text = String::new();
    for i in 0..200_000 {
        text.push_str(&format!("K{i}={i}\n"));
    }
    // A later setting of a key wins, in the file and over it.
    text.push_str("K7=seven\n");
    std::fs::write(&env, text).unwrap();
    let img = dir.path().join("exitcode.img");
    pack(&sample("exitcode"), &img, &[]);
    let env = env.to_str().unwrap();
    let args = [
        "--vmm",
        "builtin",
        "--memory",
        "256M",
        "--timeout",
        "60s",
        "--env-file",
        env,
        "--env",
        "K9=nine",
        "--",
        "env",
    ];
    let o = run(&img, &args, b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let vars: Vec<&str> = out.lines().filter(|l| l.starts_with('K')).collect();
    assert_eq!(vars.len(), 200_000);
    assert!(vars.contains(&"K7=seven") && vars.contains(&"K9=nine"));
    assert!(vars.contains(&"K199999=199999"));
    assert!(!vars.contains(&"K7=7") && !vars.contains(&"K9=9"));
}

#[test]
fn the_apps_stdio_are_terminals_where_the_hosts_are() {
    if !builtin_vmm_usable() {
        return;
    }
    // Pipes, as the tests run it: no terminal, so no colours or prompts into them.
    let o = run(&sample("exitcode"), &["--vmm", "builtin", "--", "tty"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "stdin false stdout false stderr false\n");
    // Under a pseudo-terminal (util-linux's `script`), stdout redirected to a file: the
    // app sees what the host has, stream by stream.
    let dir = scratch();
    let out = dir.path().join("tty.txt");
    let command = format!(
        "{} run --vmm builtin {} -- tty > {}",
        common::wasmvm_binary().display(),
        sample("exitcode").display(),
        out.display()
    );
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &command, "/dev/null"]);
    let o = try_output_within(script, RUN_LIMIT)
        .expect("script (util-linux) runs a command under a pseudo-terminal");
    assert!(
        o.status.success(),
        "{}: {}{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(seen, "stdin true stdout false stderr true\n");
}

#[test]
fn the_linear_memory_starts_on_a_huge_page_boundary() {
    if !builtin_vmm_usable() {
        return;
    }
    // The app's first pages then share one 2 MiB page (design.md, *Touch few huge pages*).
    let o = run(&sample("hello"), &["--vmm", "builtin", "-v"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let at = err
        .split("in place at 0x")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("no linear memory address in:\n{err}"));
    assert_eq!(at % (2 << 20), 0, "{at:#x}");
}

#[test]
fn packed_directories_are_preopened_and_writable_in_guest_memory() {
    let dir = scratch();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("input.txt"), "hello files").unwrap();
    let img = dir.path().join("files.img");
    let spec = format!("{}::/data", data.display());
    pack(&sample("files"), &img, &["--dir", &spec]);
    let o = run(&img, &[], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "initial: [\"input.txt\", \"sub/\"]\n\
         input.txt: \"hello files\"\n\
         result from offset 1: \"ELLO FILES!\\n\"\n\
         size: 13\n\
         out: [\"renamed.txt\"]\n\
         escape: refused (PermissionDenied)\n\
         final: [\"input.txt\", \"sub/\"]\n"
    );
    // The guest's writes lived in its memory: the host directory is unchanged.
    let mut names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["input.txt", "sub"]);
}

#[test]
fn reactors_run_with_invoke_and_unknown_imports_with_stubs() {
    let wasm = wat::parse_str(
        r#"(module
            (import "env" "host_thing" (func $thing (param i32) (result i32)))
            (import "wasi_snapshot_preview1" "fd_write"
                (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (global $inited (mut i32) (i32.const 0))
            (data (i32.const 16) "reactor ran\n")
            (func (export "_initialize") (global.set $inited (i32.const 1)))
            (func (export "run") (result i32)
                (i32.store (i32.const 0) (i32.const 16))
                (i32.store (i32.const 4) (i32.const 12))
                (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
                ;; 40 + the stub's zero + 2 if _initialize ran
                (i32.add (i32.add (i32.const 40) (call $thing (i32.const 5)))
                         (i32.mul (global.get $inited) (i32.const 2)))))"#,
    )
    .unwrap();
    let dir = scratch();
    let module = dir.path().join("reactor.wasm");
    std::fs::write(&module, &wasm).unwrap();

    // Without the options pack refuses, naming both problems.
    let o = wasmvm()
        .arg("pack")
        .arg(&module)
        .arg("-o")
        .arg(dir.path().join("x.img"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("imports `env.host_thing`"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("no `_start`"), "{}", stderr(&o));

    let img = dir.path().join("reactor.img");
    pack(&module, &img, &["--invoke", "run", "--stub-imports"]);
    for vmm in [&[][..], &["--vmm", "host"]] {
        let o = run(&img, vmm, b"");
        assert_eq!(o.status.code(), Some(42), "{vmm:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), "reactor ran\n");
    }
}

#[test]
fn packed_paths_cannot_leave_their_directory() {
    // An image is untrusted input: patch a packed file's path to climb out (same length, so
    // the rest of the bundle stays valid) and check both backends refuse it.
    let dir = scratch();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("zzzz.txt"), "x").unwrap();
    let img = dir.path().join("evil.img");
    pack(
        &sample("hello"),
        &img,
        &["--dir", &format!("{}::/d", data.display())],
    );
    for (from, to) in [
        (&b"zzzz.txt"[..], &b"../z.txt"[..]),
        (b"zzzz.txt", b"/tmp/z.t"),
    ] {
        let mut bytes = std::fs::read(&img).unwrap();
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        bytes[at..at + to.len()].copy_from_slice(to);
        let evil = dir.path().join("patched.img");
        std::fs::write(&evil, &bytes).unwrap();

        let host = run(&evil, &["--vmm", "host"], b"");
        assert_eq!(host.status.code(), Some(253), "{}", stderr(&host));
        assert!(
            stderr(&host).contains("packed path leaves its directory"),
            "{}",
            stderr(&host)
        );

        let vm = run(&evil, &[], b"");
        assert_eq!(vm.status.code(), Some(250), "{}", stderr(&vm));
        let shown = format!("packed file {}", String::from_utf8_lossy(to));
        assert!(stderr(&vm).contains(&shown), "{}", stderr(&vm));
    }
    assert!(!dir.path().join("z.txt").exists());
    assert!(!std::path::Path::new("/tmp/z.t").exists());
}

#[test]
fn a_missing_qemu_is_a_clear_error() {
    let o = wasmvm()
        .args(["run", "--vmm", "qemu", "--accel", accel()])
        .arg(sample("hello"))
        .env("WASMVM_QEMU", "/nonexistent/qemu-system-x86_64")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(stderr(&o).contains("was not found"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("apt-get install qemu-system-x86"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_builtin_vmms_worker_threads_run_under_seccomp() {
    if !builtin_vmm_usable() {
        return;
    }
    let mut child = start_ready(
        &["--vmm", "builtin"],
        &sample("exitcode"),
        &["spin"],
        "spinning\n",
    );
    // The vCPU thread, the output pump and the stdin pump: mode 2 is a seccomp filter.
    let mut confined = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        if status.lines().any(|l| l == "Seccomp:\t2") {
            confined.push(name.trim().to_string());
        }
    }
    child.kill().unwrap();
    wait_within(&mut child);
    for thread in ["vmm-vcpu", "vmm-output", "vmm-stdin"] {
        assert!(
            confined.iter().any(|t| t == thread),
            "{thread} not in {confined:?}"
        );
    }
}

#[test]
fn the_builtin_vmm_refuses_tcg_clearly() {
    let o = wasmvm()
        .args(["run", "--vmm", "builtin", "--accel", "tcg"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("the built-in VMM needs KVM (use --vmm qemu --accel tcg)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn large_stdin_arrives_intact() {
    let data: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let o = run(&sample("exitcode"), &["--", "cat"], &data);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        o.stdout == data,
        "stdin copy differs ({} bytes back)",
        o.stdout.len()
    );
}

#[test]
fn stdin_closed_right_after_readiness_ends_the_app() {
    // Input that lands in the guest's buffers during a notify, just before it waits, must
    // not be left unseen (a lost wakeup hangs the run; --timeout turns that into 252).
    for vmm in backends() {
        for _ in 0..10 {
            let mut child = start_ready(
                &["--vmm", vmm, "--accel", accel(), "--timeout", "20s"],
                &sample("exitcode"),
                &["idle"],
                "ready\n",
            );
            drop(child.stdin.take());
            let o = wait_with_output_within(child, RUN_LIMIT);
            assert_eq!(o.status.code(), Some(0), "{vmm}: {}", stderr(&o));
        }
    }
}

#[test]
fn unread_stdin_does_not_stall_output() {
    // The app never reads its 2 MiB of stdin and writes 8 MiB: the host's stdin writer must
    // not hold up the credit that keeps output flowing (a deadlock once; --timeout guards).
    let input = vec![b'i'; 2 << 20];
    let o = run(
        &sample("exitcode"),
        &["--timeout", "60s", "--", "spew", "8"],
        &input,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(o.stdout.len(), 8 << 20);
}

#[test]
fn large_output_arrives_intact_through_the_widened_window() {
    // 16 MiB in 64 KiB writes: far more than any window, in frames of every size.
    let o = run(&sample("exitcode"), &["--", "spew", "16"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(o.stdout.len(), 16 << 20);
    assert!(o.stdout.iter().all(|&b| b == b'x'));
}

#[test]
fn many_short_lines_arrive_whole_and_in_order() {
    // One write per line: on the built-in VMM most are staged in guest memory and taken
    // in batches (the console's quiet periods), some in place. None may be lost, doubled
    // or reordered, on any backend, and the last ones must be out before the exit status.
    let lines = 50_000;
    let o = run(
        &sample("exitcode"),
        &["--", "lines", &lines.to_string()],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let expected: String = (0..lines).map(|i| format!("line {i}\n")).collect();
    let got = stdout(&o);
    assert!(
        got == expected,
        "{} bytes instead of {}; first difference at byte {:?}",
        got.len(),
        expected.len(),
        got.bytes().zip(expected.bytes()).position(|(a, b)| a != b)
    );
}

#[test]
fn a_line_by_line_dialogue_never_strands_output() {
    // Question, answer, question...: each answer is two writes and then a wait for stdin,
    // so on the built-in VMM its second half is staged in guest memory when the guest
    // waits. An answer left there hangs the dialogue; each gets 20 s.
    use std::io::{BufRead, BufReader, Write};
    use std::time::Duration;
    for vmm in backends() {
        let mut child = start_ready(
            &["--vmm", vmm, "--accel", accel()],
            &sample("exitcode"),
            &["echo"],
            "ready\n",
        );
        let mut questions = child.stdin.take().unwrap();
        let answers = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answers);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if tx.send(std::mem::take(&mut line)).is_err() {
                    break;
                }
            }
        });
        for i in 0..500 {
            writeln!(questions, "question {i}").unwrap();
            let Ok(answer) = rx.recv_timeout(Duration::from_secs(20)) else {
                kill_and_panic(&mut child, &format!("{vmm}: no answer to question {i}"));
            };
            assert_eq!(answer, format!("question {i}\n"), "{vmm}");
        }
        drop(questions);
        let out = wait_with_output_within(child, RUN_LIMIT);
        assert_eq!(out.status.code(), Some(0), "{vmm}: {}", stderr(&out));
    }
}

#[test]
fn the_builtin_vmm_also_boots_through_pvh() {
    if !builtin_vmm_usable() {
        return;
    }
    let o = run(
        &sample("exitcode"),
        &["--vmm", "builtin", "--boot", "pvh", "-v", "--", "exit", "7"],
        b"",
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("kernel: ready (PVH entry)"),
        "{}",
        stderr(&o)
    );
    let o = run(&sample("exitcode"), &["--vmm", "builtin", "-v"], b"");
    assert!(
        stderr(&o).contains("kernel: ready (direct entry)"),
        "{}",
        stderr(&o)
    );
}

/// Waits for `child` to end, killing it and failing if it has not within `watchdog` (a hang
/// detector, not a timing assertion).
fn wait_or_fail(mut child: std::process::Child, watchdog: std::time::Duration) -> i32 {
    let deadline = std::time::Instant::now() + watchdog;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end within {watchdog:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_stop_ends_the_run_even_when_nobody_reads_its_output() {
    use std::process::Stdio;
    let spew = || {
        let mut cmd = wasmvm();
        cmd.args(["run", "--accel", accel()])
            .arg(sample("exitcode"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped()) // never read
            .stderr(Stdio::null());
        cmd
    };
    let watchdog = std::time::Duration::from_secs(60);
    // --timeout: stopped, and the output the reader never took is dropped.
    let child = spew()
        .args(["--timeout", "2s", "--", "spew", "256"])
        .spawn()
        .unwrap();
    assert_eq!(wait_or_fail(child, watchdog), 252);
    // SIGTERM while output is backed up: the same. `-v`'s "VM built" line on stderr says
    // the signal handlers are in place (stdout stays unread).
    let mut cmd = spew();
    cmd.args(["-v", "--", "spew", "256"]).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut log = Lines::new(child.stderr.take().unwrap());
    if let Err(e) = log.until(watchdog, |l| l.contains("host: VM built")) {
        kill_and_panic(&mut child, &format!("waiting for the VM to be built: {e}"));
    }
    // Dropped, the reader drains the rest of the log so it cannot block the run.
    drop(log);
    send_signal(&child, libc::SIGTERM);
    assert_eq!(wait_or_fail(child, watchdog), 143);
    // Host mode: the app itself is blocked writing to the full pipe, inside a host call
    // that never returns; the run ends without it once the call's grace has passed.
    let child = spew()
        .args(["--vmm", "host", "--timeout", "2s", "--", "spew", "256"])
        .spawn()
        .unwrap();
    assert_eq!(wait_or_fail(child, watchdog), 252);
}

/// Guest RAM is backed by transparent huge pages unless `--no-huge-pages` says otherwise
/// (when the host has THP at all).
#[test]
fn guest_ram_uses_huge_pages_unless_told_not_to() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let huge_kib = |extra: &[&str]| {
        let mut args = vec!["--vmm", "builtin"];
        args.extend_from_slice(extra);
        let mut vm = start_ready(&args, &sample("exitcode"), &["idle"], "ready\n");
        let huge = rollup_kib(vm.id(), "AnonHugePages:").expect("the VMM is gone");
        drop(vm.stdin.take());
        assert_eq!(wait_within(&mut vm).code(), Some(0));
        huge
    };
    if thp.contains("[madvise]") {
        assert!(huge_kib(&[]) >= 2048, "no huge page backs guest RAM");
        assert_eq!(huge_kib(&["--no-huge-pages"]), 0);
    } else {
        eprintln!(
            "note: THP is not in madvise mode here ({}); checking the flag runs",
            thp.trim()
        );
        huge_kib(&["--no-huge-pages"]);
    }
    let o = wasmvm()
        .args(["run", "--vmm", "qemu", "--no-huge-pages"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(253));
    assert!(
        stderr(&o).contains("--no-huge-pages is for the built-in VMM"),
        "{}",
        stderr(&o)
    );
}

/// A guest that idles gives back the zero pages of its huge pages (the VMM's idle trim)
/// and goes on as before: the stack, heap and linear memory it wrote before the trim carry
/// a dialogue of lines on after it.
#[test]
fn an_idle_guest_gives_back_its_zero_pages_and_keeps_working() {
    let Some(mut vm) = start_trimmable(&["echo"], "ready\n") else {
        return;
    };
    let mut echo = Echo::of(&mut vm);
    let question = |i: usize| format!("question {i} {}", "x".repeat(i * 37));
    echo.ask(&mut vm, &question(0));
    // Right after an answer the guest has not idled a second yet: what it holds now.
    let kib = |vm: &mut std::process::Child, field: &str| match rollup_kib(vm.id(), field) {
        Some(kib) => kib,
        None => kill_and_panic(vm, "the VMM ended while its guest idled"),
    };
    let (huge, rss) = (kib(&mut vm, "AnonHugePages:"), kib(&mut vm, "Rss:"));
    // A hello-sized guest touches three or four huge pages (the kernel's code, the stack and
    // heap, the linear memory, with -v a console buffer); the host may give fewer.
    if huge < 3 * 2048 {
        eprintln!("note: the guest holds {huge} KiB of huge pages; nothing to trim");
        drop(echo);
        assert_eq!(wait_within(&mut vm).code(), Some(0));
        return;
    }
    wait_for_trim(&mut vm, huge, rss);
    for i in 1..200 {
        echo.ask(&mut vm, &question(i));
    }
    drop(echo);
    let out = wait_with_output_within(vm, RUN_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The trim, not a host that gave no huge pages, brought them down; and the kernel's
    // code and the app bundle the VMM copied in at boot were mapped from the image file,
    // which the 199 answers after it ran on.
    assert_stderr_has(&out, "MiB of zero pages while the guest idled");
    assert_stderr_has(&out, "of the guest's copies of the image from the file");
}

/// The compiled engine runs its artifact where the bundle lies in guest RAM: once the guest
/// idles, those pages (and the kernel's) are mapped from the image file instead of a copy
/// (the file shows in the VMM's mappings), and the app runs on from them.
#[test]
fn an_idle_compiled_guest_runs_on_from_its_image_file() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("echo-compiled.img");
    pack(&sample("exitcode"), &image, &["--engine", "wasmtime"]);
    let Some(mut vm) = start_trimmable_with(&[], Some(&image), &["echo"], "ready\n") else {
        return;
    };
    let mut echo = Echo::of(&mut vm);
    echo.ask(&mut vm, "question 0");
    let maps_image = |vm: &std::process::Child| {
        std::fs::read_to_string(format!("/proc/{}/maps", vm.id()))
            .is_ok_and(|maps| maps.contains(&*image.to_string_lossy()))
    };
    assert!(
        !maps_image(&vm),
        "the image is mapped before the guest idled"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !maps_image(&vm) {
        if std::time::Instant::now() > deadline {
            kill_and_panic(
                &mut vm,
                "the idle guest's copies were not mapped from the file",
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 1..50 {
        echo.ask(&mut vm, &format!("question {i}"));
    }
    drop(echo);
    let out = wait_with_output_within(vm, RUN_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_stderr_has(&out, "of the guest's copies of the image from the file");
}

/// An image file truncated under a running VM that maps pages of it (`--no-huge-pages`
/// maps the kernel's code from the file) ends the run as a crash that says so, not a bare
/// `Bad address`.
#[test]
fn an_image_truncated_under_its_vm_ends_the_run_with_an_error_that_says_so() {
    use std::io::Write;
    if !builtin_vmm_usable() {
        eprintln!("note: no built-in VMM here; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("echo.img");
    pack(&sample("exitcode"), &image, &[]);
    let args = ["--vmm", "builtin", "--no-huge-pages"];
    let mut vm = start_ready(&args, &image, &["echo"], "ready\n");
    let mut echo = Echo::of(&mut vm);
    echo.ask(&mut vm, "before");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(4096)
        .unwrap();
    // The guest's kernel code for the next line is gone from the file.
    let _ = writeln!(echo.input, "after");
    drop(echo);
    let out = wait_with_output_within(vm, RUN_LIMIT);
    assert_eq!(out.status.code(), Some(251), "{}", stderr(&out));
    assert_stderr_has(&out, "most likely truncated while the VM ran");
}

/// A guest with a writable live directory could write the image file itself (it may lie in
/// the share), so its copies of the image are never mapped from the file: the idle trim
/// gives back zero pages only.
#[test]
fn an_idle_guest_with_a_writable_share_keeps_its_copies_of_the_image() {
    let share = tempfile::tempdir().unwrap();
    let dir = format!("{}::/data", share.path().display());
    let Some(mut vm) = start_trimmable_with(&["--dir", &dir], None, &["idle"], "ready\n") else {
        return;
    };
    if !trimmed(&mut vm) {
        return;
    }
    drop(vm.stdin.take());
    let out = wait_with_output_within(vm, RUN_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_stderr_has(&out, "MiB of zero pages while the guest idled");
    assert!(
        !stderr(&out).contains("copies of the image"),
        "{}",
        stderr(&out)
    );
}

/// A VM running `exitcode echo`: lines written to its stdin come back on its stdout.
struct Echo {
    input: std::process::ChildStdin,
    answers: Lines,
}

impl Echo {
    fn of(vm: &mut std::process::Child) -> Echo {
        Echo {
            input: vm.stdin.take().unwrap(),
            answers: Lines::new(vm.stdout.take().unwrap()),
        }
    }

    /// Writes `line` and waits (20 s at most) for it back; ends `vm` and fails otherwise.
    fn ask(&mut self, vm: &mut std::process::Child, line: &str) {
        use std::io::Write;
        writeln!(self.input, "{line}").unwrap();
        match self.answers.next_within(std::time::Duration::from_secs(20)) {
            Ok(Some(answer)) if answer == format!("{line}\n") => {}
            other => kill_and_panic(vm, &format!("{line:?}: answered {other:?}")),
        }
    }
}

/// Fails, showing it all, unless the run's stderr holds `text`.
fn assert_stderr_has(out: &std::process::Output, text: &str) {
    assert!(stderr(out).contains(text), "{}", stderr(out));
}

/// Starts `exitcode APP_ARGS` on the built-in VMM with `-v` and waits for `ready`; `None`,
/// with a note, where there is no built-in VMM or no transparent huge pages to trim.
fn start_trimmable(app_args: &[&str], ready: &str) -> Option<std::process::Child> {
    start_trimmable_with(&[], None, app_args, ready)
}

/// [`start_trimmable`] with `run_args` for `wasmvm run` besides, and `image` instead of
/// the `exitcode` sample if given.
fn start_trimmable_with(
    run_args: &[&str],
    image: Option<&std::path::Path>,
    app_args: &[&str],
    ready: &str,
) -> Option<std::process::Child> {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !builtin_vmm_usable() || !thp.contains("[madvise]") && !thp.contains("[always]") {
        eprintln!("note: no built-in VMM or no transparent huge pages here ({thp:?}); skipped");
        return None;
    }
    let mut args = vec!["--vmm", "builtin", "-v"];
    args.extend_from_slice(run_args);
    let target = image.map_or_else(|| sample("exitcode"), std::path::Path::to_path_buf);
    Some(start_ready(&args, &target, app_args, ready))
}

/// Waits for the idle trim of the VM `vm` (see [`wait_for_trim`]), from what it holds now;
/// false, with a note and the VM ended, where the host gave it too few huge pages to trim.
fn trimmed(vm: &mut std::process::Child) -> bool {
    let (Some(huge), Some(rss)) = (
        rollup_kib(vm.id(), "AnonHugePages:"),
        rollup_kib(vm.id(), "Rss:"),
    ) else {
        kill_and_panic(vm, "the VMM ended while its guest idled");
    };
    if huge < 3 * 2048 {
        eprintln!("note: the guest holds {huge} KiB of huge pages; nothing to trim");
        terminate(vm);
        return false;
    }
    wait_for_trim(vm, huge, rss);
    true
}

/// Waits until the VM `vm` holds at least two huge pages fewer than `huge` KiB and 2 MiB
/// less than `rss` KiB: a condition with a deadline, not a sleep. After a second without
/// input at least the two mostly-zero huge pages are split and their zero pages gone.
fn wait_for_trim(vm: &mut std::process::Child, huge: u64, rss: u64) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = (
            rollup_kib(vm.id(), "AnonHugePages:"),
            rollup_kib(vm.id(), "Rss:"),
        );
        let (Some(huge_now), Some(rss_now)) = now else {
            kill_and_panic(vm, "the VMM ended while its guest idled");
        };
        if huge_now + 2 * 2048 <= huge && rss_now + 2048 <= rss {
            return;
        }
        if Instant::now() > deadline {
            let why = format!("{huge} -> {huge_now} KiB of huge pages, RSS {rss} -> {rss_now} KiB");
            kill_and_panic(vm, &why);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_guest_whose_timers_wake_it_often_still_gives_back_its_zero_pages() {
    // `tick` wakes every 20 ms and gets no input: no wait of its lasts a second, yet it idles.
    let Some(mut vm) = start_trimmable(&["tick"], "ticking") else {
        return;
    };
    let stdin = vm.stdin.take();
    if !trimmed(&mut vm) {
        return;
    }
    send_signal(&vm, libc::SIGTERM);
    let out = wait_with_output_within(vm, RUN_LIMIT);
    drop(stdin);
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert_stderr_has(&out, "MiB of zero pages while the guest idled");
}

/// Stdin the app does not read costs the guest at most the stdin window: 64 MiB piped into
/// an app that never reads, in a VM of 32 MiB, must not run the guest out of memory (the
/// host stops sending after a window's worth; the run ends by its timeout).
#[test]
fn unread_stdin_cannot_exhaust_guest_memory() {
    let input = vec![b'x'; 64 << 20];
    let o = run_on(
        backends()[0],
        &sample("exitcode"),
        &["--memory", "32M", "--timeout", "3", "--", "spin"],
        &input,
    );
    assert_eq!(o.status.code(), Some(252), "{}", stderr(&o));
    assert_eq!(stdout(&o), "spinning\n");
}

/// An app that fills an in-memory (packed) directory gets ENOSPC from `fd_write` and goes
/// on, on every backend: the kernel heap running out is the app's error, not a crash.
#[test]
fn filling_a_packed_directory_is_enospc_not_a_kernel_panic() {
    let wasm = wat::parse_str(
        r#"(module
            (import "wasi_snapshot_preview1" "path_open"
                (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "fd_write"
                (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
            (memory (export "memory") 17)
            (data (i32.const 0) "big")
            (func (export "_start")
                (local $fd i32) (local $err i32)
                ;; path_open(/data, "big", O_CREAT, all rights) -> fd at 16
                (local.set $err (call $path_open (i32.const 3) (i32.const 0) (i32.const 0)
                    (i32.const 3) (i32.const 1) (i64.const -1) (i64.const -1) (i32.const 0)
                    (i32.const 16)))
                (if (local.get $err)
                    (then (call $proc_exit (i32.add (i32.const 100) (local.get $err)))))
                (local.set $fd (i32.load (i32.const 16)))
                ;; 1 MiB writes (pages 1 to 16) until one fails; exit with its errno.
                (i32.store (i32.const 32) (i32.const 65536))
                (i32.store (i32.const 36) (i32.const 1048576))
                (loop $again
                    (local.set $err (call $fd_write (local.get $fd) (i32.const 32) (i32.const 1)
                        (i32.const 48)))
                    (br_if $again (i32.eqz (local.get $err))))
                (call $proc_exit (local.get $err))))"#,
    )
    .unwrap();
    let dir = scratch();
    let module = dir.path().join("fill.wasm");
    std::fs::write(&module, &wasm).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let img = dir.path().join("fill.img");
    pack(
        &module,
        &img,
        &["--dir", &format!("{}::/data", data.display())],
    );
    for vmm in backends() {
        let o = run_on(vmm, &img, &["--memory", "64M"], b"");
        // WASI's ENOSPC is 51.
        assert_eq!(o.status.code(), Some(51), "{vmm}: {}", stderr(&o));
    }
}
