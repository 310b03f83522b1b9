//! `wasmvm image export`: a packed image (or a module, packed on the way) as a bootable
//! cloud disk, optionally with a libvirt domain for it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use wasmvm_loader::export::disk::{self, DiskFormat};
use wasmvm_loader::export::libvirt::{Domain, Firmware};
use wasmvm_loader::image::Image;
use wasmvm_loader::image::pack::PackOptions;

use crate::cli::{ExportFormatArg, FirmwareArg};

/// Firmware and GRUB take some RAM of their own; and OVMF fragments low memory, so the
/// kernel's heap (one contiguous stretch) gets less than the total.
const FIRMWARE_MIB: u64 = 64;
const MIN_DISK_VM_MIB: u64 = 256;

pub struct LibvirtArgs {
    pub name: Option<String>,
    pub firmware: FirmwareArg,
    pub memory: Option<u64>,
    pub network: Option<String>,
}

pub fn export(
    target: &Path,
    output: &Path,
    format: Option<ExportFormatArg>,
    tag: Option<&str>,
    libvirt: Option<LibvirtArgs>,
) -> Result<i32> {
    if format == Some(ExportFormatArg::Oci) && libvirt.is_some() {
        bail!("--libvirt describes a disk; an OCI image (--format oci) has no domain");
    }
    if tag.is_some() && format != Some(ExportFormatArg::Oci) {
        bail!("--tag names an OCI image: it needs --format oci");
    }
    let is_tar = output.extension().is_some_and(|e| e == "tar");
    if format.is_none() && is_tar {
        bail!(
            "{} ends in .tar: an OCI image? Say --format oci (or --format raw to write a raw disk under that name)",
            output.display()
        );
    }
    let bytes = wasmvm_loader::image::file::read(target)?;
    let image = if bytes.starts_with(b"\0asm") {
        let opts = PackOptions {
            module_name: target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned().into_bytes())
                .unwrap_or_default(),
            ..Default::default()
        };
        crate::commands::pack_with_progress(target, &bytes, &opts)
            .with_context(|| format!("cannot pack {}", target.display()))?
    } else {
        bytes
    };
    let format = match format {
        Some(ExportFormatArg::Oci) => return export_oci(&image, output, tag),
        Some(ExportFormatArg::Raw) => DiskFormat::Raw,
        Some(ExportFormatArg::Qcow2) => DiskFormat::Qcow2,
        None if output.extension().is_some_and(|e| e == "qcow2") => DiskFormat::Qcow2,
        None => DiskFormat::Raw,
    };
    // Everything the domain needs is checked before the disk is written.
    let domain_xml = match libvirt {
        Some(args) => Some(domain_xml(&image, output, format, args)?),
        None => None,
    };
    // The disk is built in a directory beside the output and renamed into place; a signal
    // meanwhile removes the directory (`signals`).
    let dir = crate::commands::directory_of(output);
    let (scratch, registered) = crate::signals::make_temporary(|| {
        tempfile::Builder::new()
            .prefix(".wasmvm-export-")
            .tempdir_in(dir)
    })
    .with_context(|| format!("cannot write in {}", dir.display()))?;
    let exported = disk::export(&image, output, format, scratch.path())
        .with_context(|| format!("cannot export {}", target.display()));
    drop(scratch);
    drop(registered);
    let exported = exported?;
    eprintln!(
        "wasmvm: wrote {} ({} disk, {} MiB, GPT: BIOS and UEFI boot)",
        output.display(),
        match format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        },
        exported.disk_size >> 20
    );
    if let Some(xml) = domain_xml {
        print!("{xml}");
    }
    Ok(0)
}

/// The libvirt domain for the disk `output` will hold.
fn domain_xml(
    image: &[u8],
    output: &Path,
    format: DiskFormat,
    args: LibvirtArgs,
) -> Result<String> {
    let parsed = Image::parse(image).context("not a wasmvm image")?;
    let memory_mib = args.memory.unwrap_or_else(|| {
        (wasmvm_loader::default_memory_mib(
            parsed.bundle.header.total_len(),
            parsed.manifest.min_memory,
        ) + FIRMWARE_MIB)
            .max(MIN_DISK_VM_MIB)
    });
    let name = match args.name {
        Some(n) => n,
        None => output
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .context("--name is needed: the output has no UTF-8 file name")?,
    };
    if name.is_empty() || name.contains('/') {
        bail!("`{name}` cannot be a libvirt domain name");
    }
    let network = match args.network.as_deref() {
        Some("none") => None,
        Some(net) => Some(net.to_string()),
        None if !parsed.manifest.listens.is_empty() => Some("default".to_string()),
        None => None,
    };
    // libvirt resolves the disk relative to its own working directory: give it an absolute
    // path, which XML must carry as text.
    let disk: PathBuf = std::path::absolute(output)
        .with_context(|| format!("cannot resolve {}", output.display()))?;
    if disk.to_str().is_none() {
        bail!(
            "{}: a libvirt domain needs a UTF-8 disk path",
            disk.display()
        );
    }
    let domain = Domain {
        name: &name,
        memory_mib,
        disk: &disk,
        format,
        firmware: match args.firmware {
            FirmwareArg::Bios => Firmware::Bios,
            FirmwareArg::Uefi => Firmware::Uefi,
        },
        network: network.as_deref(),
    };
    Ok(domain.to_xml())
}

/// `image export --format oci`: the OCI image layout tarball of `image`, named `tag` or
/// after the output.
fn export_oci(image: &[u8], output: &Path, tag: Option<&str>) -> Result<i32> {
    Image::parse(image).context("not a wasmvm image")?;
    let reference = match tag {
        Some(t) => t.to_string(),
        None => output
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .context("--tag is needed: the output has no UTF-8 file name")?,
    };
    let archive = wasmvm_loader::export::oci::archive(image, &reference).map_err(|e| {
        anyhow::anyhow!(
            "{e}{}",
            if tag.is_none() {
                " (from the output's name; say --tag NAME:TAG)"
            } else {
                ""
            }
        )
    })?;
    crate::commands::write_atomically(output, &archive)?;
    let (name, version) =
        wasmvm_loader::export::oci::parse_reference(&reference).map_err(anyhow::Error::msg)?;
    eprintln!(
        "wasmvm: wrote {} (OCI image {name}:{version}, platform wasip1/wasm, {} KiB)",
        output.display(),
        archive.len() / 1024
    );
    Ok(0)
}
