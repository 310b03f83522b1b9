//! Compiling a module for the compiled engine: Cranelift, with the configuration the kernel
//! runs artifacts with (`wasmvm_engine::compiled`), for the x86-64 baseline.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("the compiled engine cannot be set up: {0}")]
    Engine(String),
    #[error("compiling the module with Cranelift failed: {0}")]
    Compile(String),
}

/// Compiles `wasm` (already checked by `module::check`) into an artifact for the kernel's
/// wasmtime runtime. Deterministic: the same module gives the same bytes.
pub fn compile(wasm: &[u8]) -> Result<Vec<u8>, CompileError> {
    let engine = wasmtime::Engine::new(&wasmvm_engine::compiled::compiler_config())
        .map_err(|e| CompileError::Engine(format!("{e:#}")))?;
    engine
        .precompile_module(wasm)
        .map_err(|e| CompileError::Compile(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_compiles_the_same_way_twice() {
        let wasm = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        let a = compile(&wasm).unwrap();
        assert!(a.starts_with(b"\x7fELF"));
        assert_eq!(a, compile(&wasm).unwrap());
    }

    #[test]
    fn functions_compiled_in_parallel_still_give_the_same_bytes() {
        // Enough functions, of different sizes, for the threads to finish out of order.
        let mut text = String::from("(module\n");
        for i in 0..400 {
            let body = "(local.set 0 (i32.mul (local.get 0) (i32.const 31)))".repeat(1 + i % 23);
            text.push_str(&format!(
                "(func $f{i} (param i32) (result i32) {body} (local.get 0))\n"
            ));
        }
        text.push_str(r#"(func (export "_start")))"#);
        let wasm = wat::parse_str(&text).unwrap();
        let first = compile(&wasm).unwrap();
        for _ in 0..3 {
            assert!(compile(&wasm).unwrap() == first, "the artifact changed");
        }
    }

    #[test]
    fn an_invalid_module_is_an_error_not_a_panic() {
        let e = compile(b"\0asm\x01\0\0\0\x01\xff").unwrap_err();
        assert!(e.to_string().starts_with("compiling the module"), "{e}");
    }
}
