//! Linear memory the interpreter never has to copy. wasmi keeps a module's own memory in a
//! `Vec` that grows by reallocation (doubling its capacity, the old and new copies alive
//! at once), so an app only ever got about a quarter of guest RAM. A memory the module
//! *imports* can be a fixed buffer (`wasmi::Memory::new_static`) that growth only extends.
//!
//! [`import_own_memory`] rewrites a module whose one memory it defines itself into the same
//! module importing that memory as [`MODULE`].[`NAME`], byte for byte otherwise (memory
//! index 0, exports and data segments unchanged). The kernel does this at boot, on the
//! module the bundle checksum pinned; anything unusual leaves the module as it is.

use alloc::vec::Vec;

/// Where the rewritten module imports its memory from.
pub const MODULE: &str = "wasmvm";
pub const NAME: &str = "linear-memory";

/// The memory's limits in 64 KiB pages, as the module declared them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min: u32,
    pub max: Option<u32>,
}

const SECTION_IMPORT: u8 = 2;
const SECTION_MEMORY: u8 = 5;

/// The module with its own memory turned into an import, and that memory's limits; `None`
/// when the module has no memory of its own, more than one, an imported one, a 64-bit or
/// shared one, or anything this reader does not follow.
pub fn import_own_memory(module: &[u8]) -> Option<(Vec<u8>, Limits)> {
    if module.get(..8)? != b"\0asm\x01\0\0\0" {
        return None;
    }
    let mut sections = Vec::new();
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        let mut r = Reader {
            bytes: module,
            at: at + 1,
        };
        let size = r.u32()? as usize;
        let start = r.at;
        let end = start.checked_add(size).filter(|&e| e <= module.len())?;
        sections.push((id, at, start, end));
        at = end;
    }
    let memory = sections
        .iter()
        .filter(|s| s.0 == SECTION_MEMORY)
        .collect::<Vec<_>>();
    let [&(_, mem_header, mem_start, mem_end)] = memory[..] else {
        return None;
    };
    let mut r = Reader {
        bytes: &module[..mem_end],
        at: mem_start,
    };
    if r.u32()? != 1 {
        return None;
    }
    let limits_at = r.at;
    let limits = r.limits()?;
    if r.at != mem_end {
        return None;
    }
    let limits_bytes = &module[limits_at..mem_end];

    let has_import = sections.iter().any(|s| s.0 == SECTION_IMPORT);
    // The new import entry: module name, field name, kind 2 (memory), the same limits.
    let mut entry = Vec::new();
    for name in [MODULE, NAME] {
        write_u32(&mut entry, name.len() as u32);
        entry.extend_from_slice(name.as_bytes());
    }
    entry.push(2);
    entry.extend_from_slice(limits_bytes);

    let mut out = Vec::with_capacity(module.len() + entry.len() + 8);
    out.extend_from_slice(&module[..8]);
    let mut import_written = false;
    for &(id, header, start, end) in &sections {
        if header == mem_header {
            continue;
        }
        if id == SECTION_IMPORT {
            let mut r = Reader {
                bytes: &module[..end],
                at: start,
            };
            let count = r.u32()?;
            let entries_at = r.at;
            // No memory imported already (the module would then have two).
            for _ in 0..count {
                if r.import_kind()? == 2 {
                    return None;
                }
            }
            if r.at != end {
                return None;
            }
            let mut payload = Vec::new();
            write_u32(&mut payload, count.checked_add(1)?);
            payload.extend_from_slice(&module[entries_at..end]);
            payload.extend_from_slice(&entry);
            write_section(&mut out, SECTION_IMPORT, &payload);
            import_written = true;
            continue;
        }
        // Without an import section, one goes in before the first section that must
        // follow it (anything but custom and type sections).
        if !has_import && !import_written && id != 0 && id != 1 {
            write_import_section(&mut out, &entry);
            import_written = true;
        }
        out.extend_from_slice(&module[header..end]);
    }
    if !import_written {
        write_import_section(&mut out, &entry);
    }
    Some((out, limits))
}

fn write_u32(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// An import section of one entry.
fn write_import_section(out: &mut Vec<u8>, entry: &[u8]) {
    let mut payload = Vec::new();
    write_u32(&mut payload, 1);
    payload.extend_from_slice(entry);
    write_section(out, SECTION_IMPORT, &payload);
}

fn write_section(out: &mut Vec<u8>, id: u8, payload: &[u8]) {
    out.push(id);
    write_u32(out, payload.len() as u32);
    out.extend_from_slice(payload);
}

/// A bounds-checked reader of the few encodings the rewrite looks at.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            let bits = u32::from(b & 0x7f);
            if shift == 28 && bits > 0x0f {
                return None;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// 32-bit, unshared, 64 KiB pages only: flags 0 (min) and 1 (min and max).
    fn limits(&mut self) -> Option<Limits> {
        match self.byte()? {
            0 => Some(Limits {
                min: self.u32()?,
                max: None,
            }),
            1 => {
                let min = self.u32()?;
                let max = self.u32()?;
                (min <= max).then_some(Limits {
                    min,
                    max: Some(max),
                })
            }
            _ => None,
        }
    }

    fn name(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let start = self.at;
        self.at = start.checked_add(len).filter(|&e| e <= self.bytes.len())?;
        Some(&self.bytes[start..self.at])
    }

    /// Skips one import entry; returns its kind. An import already named like ours
    /// (whatever its kind) makes the rewrite impossible.
    fn import_kind(&mut self) -> Option<u8> {
        let module = self.name()?;
        let name = self.name()?;
        if module == MODULE.as_bytes() && name == NAME.as_bytes() {
            return None;
        }
        let kind = self.byte()?;
        match kind {
            // A function or a tag: a type index (a tag's after its attribute byte).
            0 => {
                self.u32()?;
            }
            4 => {
                self.byte()?;
                self.u32()?;
            }
            // A table: a plain reference type and limits.
            1 => {
                let reftype = self.byte()?;
                if reftype != 0x70 && reftype != 0x6f {
                    return None;
                }
                self.table_limits()?;
            }
            2 => {
                self.limits()?;
            }
            // A global: a plain value type and mutability.
            3 => {
                let valtype = self.byte()?;
                if !matches!(valtype, 0x7f | 0x7e | 0x7d | 0x7c | 0x7b | 0x70 | 0x6f) {
                    return None;
                }
                self.byte()?;
            }
            _ => return None,
        }
        Some(kind)
    }

    fn table_limits(&mut self) -> Option<()> {
        match self.byte()? {
            0 => {
                self.u32()?;
            }
            1 => {
                self.u32()?;
                self.u32()?;
            }
            _ => return None,
        }
        Some(())
    }
}

#[cfg(all(test, feature = "wasmi"))]
mod tests {
    use super::*;

    fn imports(module: &[u8]) -> Vec<(alloc::string::String, alloc::string::String)> {
        let engine = wasmi::Engine::default();
        let m = wasmi::Module::new(&engine, module).expect("the rewrite is a valid module");
        m.imports()
            .map(|i| (i.module().into(), i.name().into()))
            .collect()
    }

    #[test]
    fn a_modules_own_memory_becomes_an_import_with_its_limits() {
        let original = wat::parse_str(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                (memory (export "memory") 2 100)
                (data (i32.const 16) "hi")
                (func (export "_start")))"#,
        )
        .unwrap();
        let (rewritten, limits) = import_own_memory(&original).unwrap();
        assert_eq!(
            limits,
            Limits {
                min: 2,
                max: Some(100)
            }
        );
        assert_eq!(
            imports(&rewritten),
            [
                ("wasi_snapshot_preview1".into(), "proc_exit".into()),
                (MODULE.into(), NAME.into())
            ]
        );
    }

    #[test]
    fn a_module_without_imports_gets_an_import_section_in_its_place() {
        let original = wat::parse_str(
            r#"(module (type (func)) (memory 1) (func (export "_start") (type 0)))"#,
        )
        .unwrap();
        let (rewritten, limits) = import_own_memory(&original).unwrap();
        assert_eq!(limits, Limits { min: 1, max: None });
        assert_eq!(imports(&rewritten), [(MODULE.into(), NAME.into())]);
    }

    #[test]
    fn unusual_modules_are_left_alone() {
        for text in [
            r#"(module (func (export "_start")))"#,
            r#"(module (import "env" "memory" (memory 1)))"#,
            r#"(module (memory 1 1 shared))"#,
            r#"(module (memory i64 1))"#,
            r#"(module (import "wasmvm" "linear-memory" (func)) (memory 1))"#,
        ] {
            let module = wat::parse_str(text).unwrap();
            assert!(import_own_memory(&module).is_none(), "{text}");
        }
        assert!(import_own_memory(b"\0asm\x01\0\0\0\x05\xff").is_none());
        assert!(import_own_memory(b"not wasm").is_none());
        // Truncations of a real module never panic.
        let module = wat::parse_str(r#"(module (memory 1) (data (i32.const 0) "x"))"#).unwrap();
        for len in 0..module.len() {
            let _ = import_own_memory(&module[..len]);
        }
    }
}
