//! Pins docs/cli.md to the real command line: every subcommand and long flag `--help` shows
//! is documented, and the exit status table matches `wasmvm_abi::exit`.

mod common;

use common::*;
use wasmvm_abi::exit;

fn help(args: &[&str]) -> String {
    let o = wasmvm().args(args).arg("--help").output().unwrap();
    assert!(o.status.success());
    stdout(&o)
}

fn long_flags(help: &str) -> Vec<String> {
    help.split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches([',', '.', ':'])
                .split('=')
                .next()
                .unwrap()
                .split('<')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn every_command_and_flag_is_documented() {
    let doc = std::fs::read_to_string(root().join("docs/cli.md")).unwrap();
    for cmd in [
        "pack",
        "run",
        "inspect",
        "doctor",
        "volume create",
        "key generate",
        "image export",
        "ps",
        "logs",
        "stop",
        "rm",
    ] {
        assert!(
            doc.contains(&format!("### `wasmvm {cmd}")),
            "docs/cli.md lacks `wasmvm {cmd}`"
        );
        let words: Vec<&str> = cmd.split(' ').collect();
        for flag in long_flags(&help(&words)) {
            if flag == "--help" || flag == "--version" {
                continue;
            }
            assert!(
                doc.contains(&format!("`{flag}")),
                "docs/cli.md lacks {flag} of `wasmvm {cmd}`"
            );
        }
    }
}

#[test]
fn exit_status_table_matches_the_abi() {
    let doc = std::fs::read_to_string(root().join("docs/cli.md")).unwrap();
    for (status, words) in [
        (exit::HANGUP, "SIGHUP"),
        (exit::INTERRUPTED, "SIGINT"),
        (exit::TRAP, "trapped"),
        (exit::TERMINATED, "SIGTERM"),
        (exit::KERNEL_PANIC, "panicked"),
        (exit::GUEST_CRASH, "crashed"),
        (exit::TIMEOUT, "--timeout"),
        (exit::USAGE, "usage"),
        (exit::UNCAUGHT_EXCEPTION, "uncaught wasm exception"),
    ] {
        let row = doc
            .lines()
            .filter(|l| l.starts_with(&format!("| {status} |")))
            .find(|l| l.contains(words))
            .or_else(|| {
                doc.lines()
                    .find(|l| l.starts_with(&format!("| {status} |")))
            })
            .unwrap_or_else(|| panic!("docs/cli.md has no row for exit status {status}"));
        assert!(
            row.contains(words),
            "row for {status} does not mention {words}: {row}"
        );
    }
    assert!(doc.contains(&format!("0–{}", exit::MAX_APP_STATUS)));
}
