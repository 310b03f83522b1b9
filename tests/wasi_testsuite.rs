//! The official WASI preview1 conformance suite (`../shared/wasi-testsuite`, or
//! `WASMVM_WASI_TESTSUITE`), driven through the CLI exactly as a user would: `wasmvm pack
//! --dir ROOT::/ --env K=V` and `wasmvm run IMG -- ARGS` on every VM backend, and again for
//! the cases with a directory as a live share (`wasmvm run --dir COPY::/`, named `…@live`). Prints `N passed, N failed`
//! with the failing names; every failure must be listed, with its reason, in
//! `tests/wasi-testsuite.expectations`, and every listed test must still fail.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

/// `WASMVM_WASI_TESTSUITE`, else `shared/wasi-testsuite` beside the checkout (where the
/// workplace lays it for sessions and CI).
fn suite_dir() -> Option<PathBuf> {
    let candidates = match std::env::var_os("WASMVM_WASI_TESTSUITE") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            root().join("../shared/wasi-testsuite"),
            root().join("../../shared/wasi-testsuite"),
        ],
    };
    candidates.into_iter().find(|d| d.join("tests").is_dir())
}

fn expectations() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("tests/wasi-testsuite.expectations")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (name.trim().to_string(), reason.trim().to_string())
        })
        .collect()
}

/// How a case's fixture directory reaches the app.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dirs {
    /// `pack --dir`: copied into the image, the in-memory filesystem.
    Packed,
    /// `run --dir` on a scratch copy: a live share over 9P.
    Live,
}

/// Copies `from` to `to` (files, directories, symlinks as they are).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Whether a case has a fixture directory (and so also runs on a live share).
fn has_root(wasm: &Path) -> bool {
    std::fs::read(wasm.with_extension("json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|spec| spec["root"].is_string())
}

/// Runs one test case; `Err` says how it failed.
/// Runs one case on both engines; either failing fails the case.
fn run_case(wasm: &Path, dirs: Dirs) -> Result<(), String> {
    for engine in ENGINES {
        run_case_on(wasm, dirs, engine).map_err(|e| format!("{engine} engine: {e}"))?;
    }
    Ok(())
}

fn run_case_on(wasm: &Path, dirs: Dirs, engine: &str) -> Result<(), String> {
    let spec_path = wasm.with_extension("json");
    let spec: serde_json::Value = match std::fs::read(&spec_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("bad spec: {e}"))?,
        Err(_) => serde_json::json!({}),
    };
    let dir = scratch();
    let img = dir.path().join("t.img");
    let mut pack_cmd = wasmvm();
    pack_cmd
        .arg("pack")
        .arg(wasm)
        .arg("-o")
        .arg(&img)
        .args(["--engine", engine]);
    let fixture = spec["root"]
        .as_str()
        .map(|root| wasm.parent().unwrap().join(root));
    if let (Some(fixture), Dirs::Packed) = (&fixture, dirs) {
        pack_cmd
            .arg("--dir")
            .arg(format!("{}::/", fixture.display()));
    }
    if let Some(env) = spec["env"].as_object() {
        for (k, v) in env {
            pack_cmd
                .arg("--env")
                .arg(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    let o = pack_cmd.output().unwrap();
    if !o.status.success() {
        return Err(format!("pack failed: {}", stderr(&o).trim()));
    }
    let args: Vec<String> = spec["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut run_args = vec!["--timeout", "60s", "--"];
    run_args.extend(args.iter().map(String::as_str));
    // Each backend must meet the spec on its own (outputs may legitimately differ between
    // runs: some cases print hash maps in a randomly seeded order).
    for (i, vmm) in backends().iter().enumerate() {
        let mut vm_args = vec!["--vmm", vmm];
        let share;
        if let (Some(fixture), Dirs::Live) = (&fixture, dirs) {
            // The cases write to their directory: each run gets a fresh copy.
            let copy = dir.path().join(format!("root{i}"));
            copy_tree(fixture, &copy);
            share = format!("{}::/", copy.display());
            vm_args.extend(["--dir", &share]);
        }
        vm_args.extend(&run_args);
        check(&spec, &run(&img, &vm_args, b"")).map_err(|e| format!("{vmm}: {e}"))?;
    }
    Ok(())
}

/// Whether a run's outcome meets the case's spec.
fn check(spec: &serde_json::Value, o: &std::process::Output) -> Result<(), String> {
    let want_code = spec["exit_code"].as_i64().unwrap_or(0) as i32;
    let code = o.status.code().unwrap_or(-1);
    if code != want_code {
        let err = stderr(o);
        let last = err.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        return Err(format!("exit code {code}, want {want_code}: {last}"));
    }
    if let Some(want) = spec["stdout"].as_str()
        && !stdout(o).starts_with(want)
    {
        return Err(format!(
            "stdout {:?} does not start with {want:?}",
            stdout(o)
        ));
    }
    Ok(())
}

#[test]
fn wasi_testsuite_preview1() {
    let Some(suite) = suite_dir() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the WASI test suite is missing (expected ../shared/wasi-testsuite)"
        );
        eprintln!("note: no WASI test suite found; set WASMVM_WASI_TESTSUITE to run it");
        return;
    };
    let mut cases = Vec::new();
    for lang in ["assemblyscript", "c", "rust"] {
        let dir = suite
            .join("tests")
            .join(lang)
            .join("testsuite/wasm32-wasip1");
        let mut wasms: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        wasms.sort();
        for p in wasms {
            let name = format!("{lang}/{}", p.file_stem().unwrap().to_string_lossy());
            if has_root(&p) {
                cases.push((format!("{name}@live"), p.clone(), Dirs::Live));
            }
            cases.push((name, p, Dirs::Packed));
        }
    }
    let expected = expectations();
    let (mut passed, mut failed) = (Vec::new(), Vec::new());
    for (name, wasm, dirs) in &cases {
        match run_case(wasm, *dirs) {
            Ok(()) => passed.push(name.clone()),
            Err(why) => failed.push((name.clone(), why)),
        }
    }
    for (name, why) in &failed {
        let listed = if expected.contains_key(name) {
            "expected"
        } else {
            "UNEXPECTED"
        };
        println!("FAIL {name} ({listed}): {why}");
    }
    println!("{} passed, {} failed", passed.len(), failed.len());
    let unexpected: Vec<_> = failed
        .iter()
        .filter(|(n, _)| !expected.contains_key(n))
        .map(|(n, _)| n)
        .collect();
    let stale: Vec<_> = passed
        .iter()
        .filter(|n| expected.contains_key(*n))
        .collect();
    let unknown: Vec<_> = expected
        .keys()
        .filter(|n| !cases.iter().any(|(c, _, _)| c == *n))
        .collect();
    assert!(
        unexpected.is_empty(),
        "failures not in tests/wasi-testsuite.expectations: {unexpected:?}"
    );
    assert!(
        stale.is_empty(),
        "listed as failing but passed (remove them): {stale:?}"
    );
    assert!(
        unknown.is_empty(),
        "expectations name tests that do not exist: {unknown:?}"
    );
    assert_eq!(passed.len() + failed.len(), cases.len());
}
