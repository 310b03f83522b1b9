//! Every sample, run in a VM on the built-in VMM (where KVM is usable), on QEMU, on both
//! engines (wasmi, and code Cranelift compiled at pack time), and in host reference mode
//! (`--vmm host`: the same wasmi with wasi-common), must give the same stdout, stderr and
//! exit status, byte for byte.

mod common;

use common::*;

fn compare(name: &str, pack_args: &[&str], run_args: &[&str], stdin: &[u8]) {
    for engine in ENGINES {
        let mut args = pack_args.to_vec();
        args.extend(["--engine", engine]);
        compare_on(name, &args, run_args, stdin);
    }
}

fn compare_on(name: &str, pack_args: &[&str], run_args: &[&str], stdin: &[u8]) {
    let dir = scratch();
    let img = dir.path().join(format!("{name}.img"));
    pack(&sample(name), &img, pack_args);
    // `run` already holds every VM backend to the same outcome; the host is the oracle.
    let vm = run(&img, run_args, stdin);
    let mut host_args = vec!["--vmm", "host"];
    host_args.extend_from_slice(run_args);
    let host = run(&img, &host_args, stdin);
    let what = format!("{name} {pack_args:?} {run_args:?}");
    assert_eq!(
        vm.status.code(),
        host.status.code(),
        "{what}: status\nvm: {}\nhost: {}",
        stderr(&vm),
        stderr(&host)
    );
    assert_eq!(stdout(&vm), stdout(&host), "{what}: stdout");
    assert_eq!(stderr(&vm), stderr(&host), "{what}: stderr");
}

#[test]
fn hello_matches_the_host() {
    compare("hello", &[], &[], b"");
    compare("hello", &["--env", "GREETING=hi"], &["--", "a", "b c"], b"");
}

#[test]
fn exit_paths_match_the_host() {
    for args in [
        &["--", "exit", "0"][..],
        &["--", "exit", "42"],
        &["--", "exit", "125"],
        &["--", "exit", "200"],
        &["--", "trap"],
        &["--", "stderr", "text"],
        &["--", "args", "x", "ü"],
        &["--argv0", "zero", "--", "args"],
        &["--env", "Z=1", "--", "env"],
    ] {
        compare("exitcode", &["--env", "PACKED=yes"], args, b"");
    }
    compare("exitcode", &[], &["--", "cat"], b"line one\nline two\n");
}

#[test]
fn files_match_the_host() {
    let dir = scratch();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("input.txt"), "hello files").unwrap();
    std::os::unix::fs::symlink("input.txt", data.join("link")).unwrap();
    let spec = format!("{}::/data", data.display());
    compare("files", &["--dir", &spec], &[], b"");
}

#[test]
fn cpu_matches_the_host() {
    compare("cpu", &[], &["--", "200000"], b"");
}

#[test]
fn clocks_random_and_sleep_match_the_host() {
    compare("sysinfo", &["--env", "A=1"], &["--", "x"], b"");
    let o = run(&sample("sysinfo"), &[], b"");
    let out = stdout(&o);
    for line in [
        "realtime plausible: true",
        "monotonic never backwards: true",
        "slept at least 20ms: true",
        "slept under 5s: true",
        "random draws differ: true",
        "random not zero: true",
        "hashmap works: true",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}
