//! Host-side checks of a wasm module before it is packed: everything the guest would refuse,
//! found early and reported all at once.

use wasmi::{Engine, ExternType, Module};
use wasmvm_abi::wasi_imports::{FUNCTIONS, MODULE};
use wasmvm_engine::{engine_config, func_type};

/// What `pack` learned about a module that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Minimum size of the exported memory, in bytes.
    pub min_memory: u64,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// How the module will be run, which changes what it must provide.
#[derive(Debug, Clone, Copy, Default)]
pub struct Entry<'a> {
    /// Reactor mode: the export called instead of `_start`.
    pub invoke: Option<&'a str>,
    /// Unknown function imports become stubs instead of errors.
    pub stub_imports: bool,
}

/// Checks `bytes`; on failure returns every problem found, each a sentence naming it.
pub fn check(bytes: &[u8], entry: Entry) -> Result<ModuleInfo, Vec<String>> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let what = if bytes.starts_with(b"\x7fELF") {
            "an ELF executable"
        } else if bytes.is_empty() {
            "an empty file"
        } else {
            "something else"
        };
        return Err(vec![format!(
            "not a WebAssembly module: the file does not start with the `\\0asm` magic (it looks like {what})"
        )]);
    }
    match u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) {
        1 => {}
        v if v & 0xffff == 0x0d => {
            return Err(vec![
                "this is a WebAssembly component (preview 2), not a core module: build for \
                 wasm32-wasip1, or use a wasip1 adapter"
                    .to_string(),
            ]);
        }
        v => {
            return Err(vec![format!(
                "unsupported WebAssembly binary version {v:#x}"
            )]);
        }
    }
    let engine = Engine::new(&engine_config());
    let module = Module::new(&engine, bytes)
        .map_err(|e| vec![format!("invalid or unsupported module: {e}")])?;

    let mut problems = Vec::new();
    let mut imports = Vec::new();
    for import in module.imports() {
        let name = format!("{}.{}", import.module(), import.name());
        imports.push(name.clone());
        let ExternType::Func(ty) = import.ty() else {
            problems.push(format!(
                "imports `{name}`, which is not a function: wasmvm provides only WASI preview1 functions"
            ));
            continue;
        };
        let known = (import.module() == MODULE)
            .then(|| {
                let mut named = FUNCTIONS.iter().filter(|s| s.name == import.name());
                let first = named.clone().next();
                named.find(|s| func_type(s) == *ty).or(first)
            })
            .flatten();
        match known {
            None if entry.stub_imports => {}
            None => problems.push(format!(
                "imports `{name}`, which wasmvm does not provide (--stub-imports links such imports as stubs returning zeros)"
            )),
            Some(sig) => {
                if *ty != func_type(sig) {
                    problems.push(format!("imports `{name}` with the wrong signature {ty:?}"));
                }
            }
        }
    }

    let mut exports = Vec::new();
    let mut min_memory = 0;
    let mut has_entry = false;
    let entry_name = entry.invoke.unwrap_or("_start");
    for export in module.exports() {
        exports.push(export.name().to_string());
        match export.ty() {
            ExternType::Func(ty) if export.name() == entry_name => {
                let results_ok = ty.results().is_empty()
                    || (entry.invoke.is_some() && ty.results() == [wasmi::ValType::I32]);
                if !ty.params().is_empty() || !results_ok {
                    problems.push(format!(
                        "`{entry_name}` must take no parameters and return nothing{}",
                        if entry.invoke.is_some() {
                            " or an i32 status"
                        } else {
                            ""
                        }
                    ));
                }
                has_entry = true;
            }
            ExternType::Memory(mem) if export.name() == "memory" => {
                min_memory = mem.minimum().saturating_mul(65536);
            }
            _ => {}
        }
    }
    if !has_entry {
        problems.push(match entry.invoke {
            Some(name) => format!("exports no function `{name}` to --invoke"),
            None => {
                "exports no `_start` function: pack a command, or a reactor with --invoke EXPORT"
                    .to_string()
            }
        });
    }
    if problems.is_empty() {
        Ok(ModuleInfo {
            min_memory,
            imports,
            exports,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // (module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
    //         (memory (export "memory") 1) (func (export "_start")))
    const MINIMAL: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x60, 0x01, 0x7f, 0x00,
        0x60, 0x00, 0x00, 0x02, 0x24, 0x01, 0x16, b'w', b'a', b's', b'i', b'_', b's', b'n', b'a',
        b'p', b's', b'h', b'o', b't', b'_', b'p', b'r', b'e', b'v', b'i', b'e', b'w', b'1', 0x09,
        b'p', b'r', b'o', b'c', b'_', b'e', b'x', b'i', b't', 0x00, 0x00, 0x03, 0x02, 0x01, 0x01,
        0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x13, 0x02, 0x06, b'm', b'e', b'm', b'o', b'r', b'y',
        0x02, 0x00, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x01, 0x0a, 0x04, 0x01, 0x02,
        0x00, 0x0b,
    ];

    #[test]
    fn accepts_a_minimal_command() {
        let info = check(MINIMAL, Entry::default()).expect("valid");
        assert_eq!(info.min_memory, 65536);
        assert_eq!(info.imports, ["wasi_snapshot_preview1.proc_exit"]);
    }

    #[test]
    fn names_each_problem() {
        let text = check(b"hello world\n", Entry::default()).unwrap_err();
        assert!(text[0].contains("not a WebAssembly module"), "{text:?}");
        let truncated = check(&MINIMAL[..MINIMAL.len() - 3], Entry::default()).unwrap_err();
        assert!(
            truncated[0].contains("invalid or unsupported module"),
            "{truncated:?}"
        );
        let component = check(b"\0asm\x0d\0\x01\0", Entry::default()).unwrap_err();
        assert!(component[0].contains("component"), "{component:?}");
        // Rename the import module to `env` (same length as... no: patch the name bytes).
        let mut bad = MINIMAL.to_vec();
        let at = bad.windows(9).position(|w| w == b"proc_exit").unwrap();
        bad[at..at + 9].copy_from_slice(b"proc_exiz");
        let errs = check(&bad, Entry::default()).unwrap_err();
        assert!(
            errs[0].starts_with(
                "imports `wasi_snapshot_preview1.proc_exiz`, which wasmvm does not provide"
            ),
            "{errs:?}"
        );
        let stubbed = Entry {
            stub_imports: true,
            ..Entry::default()
        };
        assert!(check(&bad, stubbed).is_ok());
        let invoked = Entry {
            invoke: Some("nope"),
            ..Entry::default()
        };
        assert_eq!(
            check(MINIMAL, invoked).unwrap_err(),
            ["exports no function `nope` to --invoke"]
        );
    }
}
