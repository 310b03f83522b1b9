//! Images: the prebuilt kernel ELF plus one extra `PT_LOAD` segment holding the app bundle
//! (see `wasmvm_abi::bundle` and docs/abi.md). Packing is deterministic: the same kernel,
//! module and options give the same bytes.

pub mod compile;
pub mod elf;
pub mod file;
pub mod mapped;
pub mod module;
pub mod pack;
pub mod signing;

use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmvm_abi::bundle::{
    ArtifactRef, BUNDLE_ALIGN, BUNDLE_MAGIC, BundleHeader, BundleRef, Engine, Manifest,
    bundle_load_addr, kernel_note,
};
use wasmvm_abi::{ABI_VERSION, align_up};

use crate::image::elf::{EHDR_LEN, Elf, ElfError, PHDR_LEN, PT_LOAD, ProgramHeader};

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("kernel: {0}")]
    Kernel(ElfError),
    #[error("kernel speaks ABI version {found:?}, this wasmvm speaks {ABI_VERSION}")]
    KernelAbi { found: Option<u32> },
    #[error("not a wasmvm image: {0}")]
    NotElf(ElfError),
    #[error("not a wasmvm image: it has no app bundle")]
    NoBundle,
    #[error("corrupt app bundle: {0}")]
    Bundle(wasmvm_abi::DecodeError),
    #[error("app bundle checksum mismatch: the compiled code was modified after packing")]
    ArtifactChecksum,
    #[error("app bundle checksum mismatch: the module was modified after packing")]
    Checksum,
    #[error("module too large ({0} bytes)")]
    TooLarge(usize),
}

/// Versions a kernel ELF declares in its `wasmvm` notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelVersion {
    pub abi_version: Option<u32>,
    pub version: String,
}

pub fn kernel_version(elf: &Elf) -> KernelVersion {
    let mut v = KernelVersion {
        abi_version: None,
        version: String::from("unknown"),
    };
    for (owner, kind, desc) in elf.notes() {
        if owner != kernel_note::NAME {
            continue;
        }
        match kind {
            kernel_note::TYPE_ABI_VERSION if desc.len() == 4 => {
                v.abi_version = Some(u32::from_le_bytes(desc.try_into().expect("4 bytes")));
            }
            kernel_note::TYPE_KERNEL_VERSION => {
                let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
                v.version = String::from_utf8_lossy(&desc[..end]).into_owned();
            }
            _ => {}
        }
    }
    v
}

/// Builds an image from a kernel ELF, a module (already checked), its manifest and, for the
/// compiled engine, the artifact compiled from the module (placed page aligned after it, so
/// the guest runs its code in place).
pub fn pack(
    kernel: &[u8],
    module: &[u8],
    manifest: &Manifest,
    artifact: Option<&[u8]>,
) -> Result<Vec<u8>, ImageError> {
    let elf = Elf::parse(kernel).map_err(ImageError::Kernel)?;
    let versions = kernel_version(&elf);
    if versions.abi_version != Some(ABI_VERSION) {
        return Err(ImageError::KernelAbi {
            found: versions.abi_version,
        });
    }
    let manifest_bytes = manifest.encode();
    let manifest_len = u32::try_from(manifest_bytes.len())
        .map_err(|_| ImageError::TooLarge(manifest_bytes.len()))?;
    let artifact_ref = artifact.map(|a| ArtifactRef {
        offset: BundleHeader::artifact_offset(manifest_len, module.len() as u64),
        len: a.len() as u64,
        sha256: Sha256::digest(a).into(),
    });
    let header = BundleHeader {
        manifest_len,
        engine: match artifact {
            Some(_) => Engine::Wasmtime,
            None => Engine::Wasmi,
        },
        module_len: module.len() as u64,
        module_sha256: Sha256::digest(module).into(),
        artifact: artifact_ref,
    };
    let bundle_addr = bundle_load_addr(elf.load_end());
    if bundle_addr + header.total_len() > 3 << 30 {
        return Err(ImageError::TooLarge(module.len()));
    }

    let mut out = kernel.to_vec();
    out.resize(align_up(out.len() as u64, BUNDLE_ALIGN) as usize, 0);
    let bundle_offset = out.len() as u64;
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&manifest_bytes);
    out.extend_from_slice(module);
    if let (Some(bytes), Some(at)) = (artifact, artifact_ref) {
        out.resize((bundle_offset + at.offset) as usize, 0);
        out.extend_from_slice(bytes);
    }
    out.resize(align_up(out.len() as u64, 8) as usize, 0);

    // The program header table: the kernel's own entries plus the bundle's. It stays where
    // the kernel's is when the zero gap before the first segment has room for one more
    // entry (it does for our kernel: Multiboot2 loaders such as GRUB only read program
    // headers within the file's first 32 KiB); else a new table goes at the end.
    let mut phdrs = elf.phdrs.clone();
    let old_phoff = elf.phoff as usize;
    let grown_end = old_phoff + (phdrs.len() + 1) * PHDR_LEN;
    let first_segment = phdrs
        .iter()
        .filter(|p| p.p_filesz > 0)
        .map(|p| p.p_offset as usize)
        .min()
        .unwrap_or(0);
    let in_place = grown_end <= first_segment
        && out[old_phoff + phdrs.len() * PHDR_LEN..grown_end]
            .iter()
            .all(|&b| b == 0);
    let phoff = if in_place {
        old_phoff as u64
    } else {
        out.len() as u64
    };
    phdrs.push(ProgramHeader {
        p_type: PT_LOAD,
        p_flags: 4, // PF_R
        p_offset: bundle_offset,
        p_vaddr: bundle_addr,
        p_paddr: bundle_addr,
        p_filesz: header.total_len(),
        p_memsz: header.total_len(),
        p_align: BUNDLE_ALIGN,
    });
    let table: Vec<u8> = phdrs.iter().flat_map(|ph| ph.encode()).collect();
    if in_place {
        out[old_phoff..grown_end].copy_from_slice(&table);
    } else {
        out.extend_from_slice(&table);
    }
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    debug_assert!(EHDR_LEN <= out.len() && PHDR_LEN == 56);
    Ok(out)
}

/// A parsed image.
#[derive(Debug)]
pub struct Image<'a> {
    pub kernel: KernelVersion,
    pub bundle: BundleRef<'a>,
    pub manifest: Manifest,
    /// Bytes of the image up to the bundle: the kernel's own part.
    pub kernel_len: usize,
}

impl<'a> Image<'a> {
    /// Parses and verifies an image: ELF structure, bundle header, manifest and checksum.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let elf = Elf::parse(bytes).map_err(ImageError::NotElf)?;
        let ph = elf
            .phdrs
            .iter()
            .find(|p| p.p_type == PT_LOAD && elf.segment(p).starts_with(&BUNDLE_MAGIC))
            .ok_or(ImageError::NoBundle)?;
        let bundle = BundleRef::decode(elf.segment(ph)).map_err(ImageError::Bundle)?;
        let digest: [u8; 32] = Sha256::digest(bundle.module).into();
        if digest != bundle.header.module_sha256 {
            return Err(ImageError::Checksum);
        }
        if let (Some(bytes), Some(at)) = (bundle.artifact, bundle.header.artifact) {
            let digest: [u8; 32] = Sha256::digest(bytes).into();
            if digest != at.sha256 {
                return Err(ImageError::ArtifactChecksum);
            }
        }
        let manifest = Manifest::decode(bundle.manifest).map_err(ImageError::Bundle)?;
        Ok(Image {
            kernel: kernel_version(&elf),
            bundle,
            manifest,
            kernel_len: ph.p_offset as usize,
        })
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
