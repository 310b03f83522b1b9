//! Just enough ELF64 for images: validated headers, program headers and notes.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian x86-64 executable")]
    WrongKind,
    #[error("ELF file is truncated or its headers point outside it")]
    Truncated,
}

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const EHDR_LEN: usize = 64;
pub const PHDR_LEN: usize = 56;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

impl ProgramHeader {
    pub fn encode(&self) -> [u8; PHDR_LEN] {
        let mut b = [0u8; PHDR_LEN];
        b[0..4].copy_from_slice(&self.p_type.to_le_bytes());
        b[4..8].copy_from_slice(&self.p_flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.p_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.p_vaddr.to_le_bytes());
        b[24..32].copy_from_slice(&self.p_paddr.to_le_bytes());
        b[32..40].copy_from_slice(&self.p_filesz.to_le_bytes());
        b[40..48].copy_from_slice(&self.p_memsz.to_le_bytes());
        b[48..56].copy_from_slice(&self.p_align.to_le_bytes());
        b
    }
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    let s = b.get(off..off + 2).ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let s = b.get(off..off + 4).ok_or(ElfError::Truncated)?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let s = b.get(off..off + 8).ok_or(ElfError::Truncated)?;
    Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// A validated ELF64 x86-64 executable, borrowed.
#[derive(Debug)]
pub struct Elf<'a> {
    pub bytes: &'a [u8],
    pub entry: u64,
    pub phoff: u64,
    pub phdrs: Vec<ProgramHeader>,
}

impl<'a> Elf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if bytes.len() < EHDR_LEN {
            return Err(ElfError::Truncated);
        }
        // ELFCLASS64, little endian, ET_EXEC, EM_X86_64.
        if bytes[4] != 2 || bytes[5] != 1 || u16_at(bytes, 16)? != 2 || u16_at(bytes, 18)? != 62 {
            return Err(ElfError::WrongKind);
        }
        let entry = u64_at(bytes, 24)?;
        let phoff = u64_at(bytes, 32)?;
        if u16_at(bytes, 54)? as usize != PHDR_LEN {
            return Err(ElfError::WrongKind);
        }
        let phnum = u16_at(bytes, 56)? as usize;
        let mut phdrs = Vec::with_capacity(phnum);
        for i in 0..phnum {
            let at = usize::try_from(phoff)
                .ok()
                .and_then(|o| o.checked_add(i * PHDR_LEN))
                .ok_or(ElfError::Truncated)?;
            let ph = ProgramHeader {
                p_type: u32_at(bytes, at)?,
                p_flags: u32_at(bytes, at + 4)?,
                p_offset: u64_at(bytes, at + 8)?,
                p_vaddr: u64_at(bytes, at + 16)?,
                p_paddr: u64_at(bytes, at + 24)?,
                p_filesz: u64_at(bytes, at + 32)?,
                p_memsz: u64_at(bytes, at + 40)?,
                p_align: u64_at(bytes, at + 48)?,
            };
            if ph
                .p_offset
                .checked_add(ph.p_filesz)
                .is_none_or(|end| end > bytes.len() as u64)
            {
                return Err(ElfError::Truncated);
            }
            phdrs.push(ph);
        }
        Ok(Elf {
            bytes,
            entry,
            phoff,
            phdrs,
        })
    }

    /// The file bytes of a segment.
    pub fn segment(&self, ph: &ProgramHeader) -> &'a [u8] {
        &self.bytes[ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize]
    }

    /// Every note in the `PT_NOTE` segments, as (owner, type, descriptor).
    pub fn notes(&self) -> Vec<(&'a [u8], u32, &'a [u8])> {
        let mut out = Vec::new();
        for ph in self.phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
            let seg = self.segment(ph);
            let mut at = 0usize;
            while at + 12 <= seg.len() {
                let (Ok(namesz), Ok(descsz), Ok(kind)) =
                    (u32_at(seg, at), u32_at(seg, at + 4), u32_at(seg, at + 8))
                else {
                    break;
                };
                let name_at = at + 12;
                let desc_at = name_at + (namesz as usize).next_multiple_of(4);
                let end = desc_at + (descsz as usize).next_multiple_of(4);
                let (Some(name), Some(desc)) = (
                    seg.get(name_at..name_at + namesz as usize),
                    seg.get(desc_at..desc_at + descsz as usize),
                ) else {
                    break;
                };
                let name = name.strip_suffix(b"\0").unwrap_or(name);
                out.push((name, kind, desc));
                at = end;
            }
        }
        out
    }

    /// End (exclusive) of the highest `PT_LOAD` segment in physical memory.
    pub fn load_end(&self) -> u64 {
        self.phdrs
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| p.p_paddr.saturating_add(p.p_memsz))
            .max()
            .unwrap_or(0)
    }
}
