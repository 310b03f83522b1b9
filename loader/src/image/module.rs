//! Host-side checks of a wasm module before it is packed: everything the guest would refuse,
//! found early and reported all at once.

use wasmparser::types::{EntityType, TypesRef};
use wasmparser::{FuncType, Operator, Parser, Payload, ValType, Validator, WasmFeatures};
use wasmvm_abi::bundle::Engine;
use wasmvm_abi::wasi_imports::{FUNCTIONS, MODULE, Sig};

/// What `pack` learned about a module that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Minimum size of the exported memory, in bytes.
    pub min_memory: u64,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// The engine that will run it.
    pub engine: Engine,
    /// Why that engine, when `pack` chose it rather than the default.
    pub engine_reason: Option<&'static str>,
}

/// How the module will be run, which changes what it must provide.
#[derive(Debug, Clone, Copy, Default)]
pub struct Entry<'a> {
    /// Reactor mode: the export called instead of `_start`.
    pub invoke: Option<&'a str>,
    /// Unknown function imports become stubs instead of errors.
    pub stub_imports: bool,
    /// The engine asked for (`--engine`); `None` lets `check` choose: wasmi, unless the
    /// module needs a proposal wasmi lacks.
    pub engine: Option<Engine>,
}

/// Which exception-handling encoding a module's code uses, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exceptions {
    None,
    /// `try_table`, `throw`, `throw_ref`, `exnref`: the standard, which wasmtime runs.
    Final,
    /// `try`, `catch`, `catch_all`, `delegate`, `rethrow`: the first draft, which older
    /// compilers emit and no engine of ours runs.
    Legacy,
}

/// Scans the code for exception-handling instructions. A module that does not parse is
/// left to validation, which says why.
fn exceptions(bytes: &[u8]) -> Exceptions {
    let mut found = Exceptions::None;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return found;
        };
        match payload {
            Payload::TagSection(_) if found == Exceptions::None => found = Exceptions::Final,
            Payload::CodeSectionEntry(body) => {
                let Ok(mut ops) = body.get_operators_reader() else {
                    return found;
                };
                while !ops.eof() {
                    match ops.read() {
                        Ok(
                            Operator::Try { .. }
                            | Operator::Catch { .. }
                            | Operator::CatchAll
                            | Operator::Delegate { .. }
                            | Operator::Rethrow { .. },
                        ) => return Exceptions::Legacy,
                        Ok(
                            Operator::TryTable { .. } | Operator::Throw { .. } | Operator::ThrowRef,
                        ) => found = Exceptions::Final,
                        Ok(_) => {}
                        Err(_) => return found,
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// The proposals each engine runs, as `wasmparser` validates them.
fn features(engine: Engine) -> WasmFeatures {
    let wasmi = WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::MULTI_MEMORY
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::REFERENCE_TYPES
        | WasmFeatures::TAIL_CALL
        | WasmFeatures::EXTENDED_CONST
        | WasmFeatures::SIMD
        | WasmFeatures::FLOATS;
    match engine {
        Engine::Wasmi => wasmi,
        // As `wasmvm_engine::compiled::config` sets them.
        Engine::Wasmtime => {
            wasmi
                | WasmFeatures::RELAXED_SIMD
                | WasmFeatures::FUNCTION_REFERENCES
                | WasmFeatures::GC
                | WasmFeatures::GC_TYPES
                | WasmFeatures::EXCEPTIONS
        }
    }
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
    let (engine, engine_reason) = match (exceptions(bytes), entry.engine) {
        (Exceptions::Legacy, _) => {
            return Err(vec![
                "uses the legacy exception-handling encoding (`try`/`catch`/`delegate`, from \
                 older compilers), which no wasmvm engine runs: rebuild it for the standard \
                 encoding (`try_table`; clang/LLVM 20+: `-mllvm -wasm-use-legacy-eh=false`)"
                    .to_string(),
            ]);
        }
        (Exceptions::Final, Some(Engine::Wasmi)) => {
            return Err(vec![
                "uses exception handling, which wasmi cannot run: pack it with \
                 --engine wasmtime (or without --engine, which chooses it)"
                    .to_string(),
            ]);
        }
        (Exceptions::Final, None) => (
            Engine::Wasmtime,
            Some("it uses exception handling, which wasmi cannot run"),
        ),
        (_, Some(engine)) => (engine, None),
        (Exceptions::None, None) => (Engine::Wasmi, None),
    };
    let types = Validator::new_with_features(features(engine))
        .validate_all(bytes)
        .map_err(|e| vec![format!("invalid or unsupported module: {e}")])?;
    if engine == Engine::Wasmi {
        // wasmi's own limits, beyond the proposals (the kernel runs exactly this).
        let wasmi = wasmi::Engine::new(&wasmvm_engine::engine_config());
        wasmi::Module::new(&wasmi, bytes)
            .map_err(|e| vec![format!("invalid or unsupported module: {e}")])?;
    }
    let types = types.as_ref();
    let mut info = describe(&types, entry)?;
    info.engine = engine;
    info.engine_reason = engine_reason;
    Ok(info)
}

/// A function type as the import table writes it.
fn matches(sig: &Sig, ty: &FuncType) -> bool {
    let val = |t: &wasmvm_abi::wasi_imports::ValType| match t {
        wasmvm_abi::wasi_imports::ValType::I32 => ValType::I32,
        wasmvm_abi::wasi_imports::ValType::I64 => ValType::I64,
    };
    sig.params.iter().map(val).eq(ty.params().iter().copied())
        && sig.results.iter().map(val).eq(ty.results().iter().copied())
}

/// A function type as text, e.g. `(i32, i64) -> (i32)`.
fn show(ty: &FuncType) -> String {
    let list = |types: &[ValType]| {
        let names: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        format!("({})", names.join(", "))
    };
    format!("{} -> {}", list(ty.params()), list(ty.results()))
}

/// Checks a validated module's imports and exports against WASI and the entry point.
fn describe(types: &TypesRef<'_>, entry: Entry) -> Result<ModuleInfo, Vec<String>> {
    let func_type = |id: wasmparser::types::CoreTypeId| types[id].unwrap_func().clone();
    let mut problems = Vec::new();
    let mut imports = Vec::new();
    for (module, name, ty) in types.core_imports().into_iter().flatten() {
        let full = format!("{module}.{name}");
        imports.push(full.clone());
        let EntityType::Func(id) = ty else {
            problems.push(format!(
                "imports `{full}`, which is not a function: wasmvm provides only WASI preview1 functions"
            ));
            continue;
        };
        let ty = func_type(id);
        let known = (module == MODULE)
            .then(|| {
                let mut named = FUNCTIONS.iter().filter(|s| s.name == name);
                let first = named.clone().next();
                named.find(|s| matches(s, &ty)).or(first)
            })
            .flatten();
        match known {
            None if entry.stub_imports => {}
            None => problems.push(format!(
                "imports `{full}`, which wasmvm does not provide (--stub-imports links such imports as stubs returning zeros)"
            )),
            Some(sig) => {
                if !matches(sig, &ty) {
                    problems.push(format!(
                        "imports `{full}` with the wrong signature {}",
                        show(&ty)
                    ));
                }
            }
        }
    }

    let mut exports = Vec::new();
    let mut min_memory = 0;
    let mut has_entry = false;
    let entry_name = entry.invoke.unwrap_or("_start");
    for (name, ty) in types.core_exports().into_iter().flatten() {
        exports.push(name.to_string());
        match ty {
            EntityType::Func(id) if name == entry_name => {
                let ty = func_type(id);
                let results_ok = ty.results().is_empty()
                    || (entry.invoke.is_some() && ty.results() == [ValType::I32]);
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
            EntityType::Memory(mem) if name == "memory" => {
                min_memory = mem.initial.saturating_mul(65536);
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
            engine: Engine::Wasmi,
            engine_reason: None,
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

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    const THROWS: &str = r#"(module
        (memory (export "memory") 1)
        (tag $e (param i32))
        (func (export "_start")
          (block $h (result i32)
            (try_table (catch $e $h) (throw $e (i32.const 7)))
            (i32.const 0))
          drop))"#;

    #[test]
    fn exception_handling_chooses_the_compiled_engine() {
        let info = check(&wat(THROWS), Entry::default()).unwrap();
        assert_eq!(info.engine, Engine::Wasmtime);
        assert!(info.engine_reason.unwrap().contains("exception handling"));
        // Forced either way: wasmi is refused by name; wasmtime needs no reason.
        let wasmi = Entry {
            engine: Some(Engine::Wasmi),
            ..Entry::default()
        };
        let e = check(&wat(THROWS), wasmi).unwrap_err();
        assert!(e[0].contains("wasmi cannot run"), "{e:?}");
        let compiled = Entry {
            engine: Some(Engine::Wasmtime),
            ..Entry::default()
        };
        let info = check(MINIMAL, compiled).unwrap();
        assert_eq!((info.engine, info.engine_reason), (Engine::Wasmtime, None));
        // Without exceptions the default stays wasmi.
        assert_eq!(
            check(MINIMAL, Entry::default()).unwrap().engine,
            Engine::Wasmi
        );
    }

    #[test]
    fn the_legacy_exception_encoding_is_refused_by_name() {
        let legacy = wat(r#"(module
                (tag $e)
                (func (export "_start")
                  try
                    throw $e
                  catch $e
                  end))"#);
        for engine in [None, Some(Engine::Wasmtime), Some(Engine::Wasmi)] {
            let e = check(
                &legacy,
                Entry {
                    engine,
                    ..Entry::default()
                },
            )
            .unwrap_err();
            assert!(e[0].contains("legacy exception-handling encoding"), "{e:?}");
        }
    }

    #[test]
    fn proposals_beyond_an_engine_are_refused() {
        // memory64 is on neither engine (WASI preview1 has 32-bit pointers).
        let m64 = wat(r#"(module (memory i64 1) (func (export "_start")))"#);
        for engine in [Engine::Wasmi, Engine::Wasmtime] {
            let e = check(
                &m64,
                Entry {
                    engine: Some(engine),
                    ..Entry::default()
                },
            )
            .unwrap_err();
            assert!(e[0].starts_with("invalid or unsupported module"), "{e:?}");
        }
    }
}
