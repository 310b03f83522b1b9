//! Cloud disk images (`wasmvm image export`): the packed image, unchanged, on a GPT disk that
//! boots on any PC firmware, so OpenStack, CloudStack, Proxmox or libvirt run it as an
//! ordinary VM.
//!
//! ```text
//! LBA 0        protective MBR, with GRUB's boot.img in its code area (BIOS)
//! LBA 1–33     GPT header and partition entries
//! 1 MiB        partition 1, BIOS boot: GRUB's core.img for i386-pc
//! 2 MiB        partition 2, EFI system (FAT): /EFI/BOOT/BOOTX64.EFI (GRUB for x86_64-efi)
//!              and /wasmvm/app.img (the image, byte for byte, signature included)
//! end − 33     backup partition entries and GPT header
//! ```
//!
//! Both GRUBs come from Debian's packages (`grub-pc-bin`, `grub-efi-amd64-bin`), built here
//! by `grub-mkimage` with a configuration embedded in them: find the FAT volume by its serial
//! number, `multiboot2 /wasmvm/app.img`, `boot`. GRUB loads the image's ELF segments (the
//! app bundle is one) and enters the kernel's Multiboot2 path. The FAT volume is written by
//! the `fatfs` crate; the GPT by hand (a few fixed structures, but its exact placement is what
//! BIOS booting depends on); qcow2 by `qemu-img convert`.

use std::fs::File;
use std::io::{self, Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmvm_abi::multiboot2;

use crate::image::{Image, ImageError};

pub const SECTOR: u64 = 512;
/// Partition 1 (BIOS boot, GRUB's core.img): 1 MiB at 1 MiB.
const BIOS_BOOT_LBA: u64 = 2048;
const BIOS_BOOT_SECTORS: u64 = 2048;
/// Partition 2 (EFI system): from 2 MiB.
const ESP_LBA: u64 = BIOS_BOOT_LBA + BIOS_BOOT_SECTORS;
/// GPT partition entries: 128 of 128 bytes, 32 sectors.
const GPT_ENTRIES: u64 = 128;
const GPT_ENTRY_LEN: u64 = 128;
const GPT_ENTRY_SECTORS: u64 = GPT_ENTRIES * GPT_ENTRY_LEN / SECTOR;
const BIOS_BOOT_TYPE: &str = "21686148-6449-6e6f-744e-656564454649";
const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Where the image lies on the FAT volume.
pub const IMAGE_PATH: &str = "/wasmvm/app.img";
/// Offsets GRUB's `grub-bios-setup` patches: in boot.img, the LBA of core.img's first
/// sector; in core.img's first sector (diskboot.img), the blocklist of the rest.
const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// In boot.img, a 2-byte jump over the check for BIOSes that pass a wrong boot drive; for
/// hard disks grub-bios-setup replaces it with two NOPs, so the check runs.
const BOOT_DRIVE_CHECK: usize = 0x66;
const DISKBOOT_BLOCKLIST: usize = 0x200 - 12;
/// GRUB modules both images need (grub-mkimage adds their dependencies), and what the BIOS
/// one needs on top: disk access through the BIOS, and the serial port as a terminal.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "fat",
    "search",
    "search_fs_uuid",
    "multiboot2",
    "boot",
    "echo",
    "halt",
];
const BIOS_ONLY_MODULES: &[&str] = &["biosdisk", "serial", "terminal"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("not a wasmvm image: {0}")]
    Image(#[from] ImageError),
    #[error(
        "GRUB cannot load this image (no Multiboot2 header, or program headers beyond the first 32 KiB): pack it again with this wasmvm"
    )]
    NoMultiboot,
    #[error("{tool} is needed to export disk images: install the Debian package {package}")]
    MissingTool { tool: String, package: &'static str },
    #[error("{tool} failed: {message}")]
    ToolFailed { tool: String, message: String },
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("cannot build the FAT volume: {0}")]
    Fat(io::Error),
    #[error("GRUB's core.img is {0} bytes, more than the 1 MiB BIOS boot partition holds")]
    CoreTooLarge(usize),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |cause| DiskError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Where GRUB's tools and platform files are.
#[derive(Debug, Clone)]
pub struct Grub {
    pub mkimage: PathBuf,
    /// `/usr/lib/grub`: holds `i386-pc/` and `x86_64-efi/`.
    pub lib: PathBuf,
}

impl Grub {
    /// Finds GRUB: `grub-mkimage` on `PATH` (or `$WASMVM_GRUB_MKIMAGE`) and the platform
    /// files in `/usr/lib/grub` (or `$WASMVM_GRUB_LIB`).
    pub fn find() -> Result<Grub, DiskError> {
        let mkimage = std::env::var_os("WASMVM_GRUB_MKIMAGE")
            .map(PathBuf::from)
            .or_else(|| find_in_path("grub-mkimage"))
            .ok_or(DiskError::MissingTool {
                tool: "grub-mkimage".into(),
                package: "grub-common",
            })?;
        let lib = std::env::var_os("WASMVM_GRUB_LIB")
            .map_or_else(|| PathBuf::from("/usr/lib/grub"), PathBuf::from);
        for (platform, package) in [
            ("i386-pc", "grub-pc-bin"),
            ("x86_64-efi", "grub-efi-amd64-bin"),
        ] {
            if !lib.join(platform).join("moddep.lst").is_file() {
                return Err(DiskError::MissingTool {
                    tool: format!("GRUB for {platform} ({})", lib.join(platform).display()),
                    package,
                });
            }
        }
        Ok(Grub { mkimage, lib })
    }

    /// Runs `grub-mkimage` for `platform` with `config` embedded; returns the image.
    fn mkimage(
        &self,
        platform: &str,
        config: &Path,
        modules: &[&str],
        scratch: &Path,
    ) -> Result<Vec<u8>, DiskError> {
        let out = scratch.join(format!("{platform}.img"));
        let result = Command::new(&self.mkimage)
            .arg("--directory")
            .arg(self.lib.join(platform))
            .args(["--format", platform, "--prefix", "/wasmvm", "--config"])
            .arg(config)
            .arg("--output")
            .arg(&out)
            .args(modules)
            .output()
            .map_err(|e| DiskError::ToolFailed {
                tool: self.mkimage.display().to_string(),
                message: e.to_string(),
            })?;
        if !result.status.success() {
            return Err(DiskError::ToolFailed {
                tool: format!("grub-mkimage --format {platform}"),
                message: String::from_utf8_lossy(&result.stderr).trim().to_string(),
            });
        }
        std::fs::read(&out).map_err(io_at(&out))
    }
}

/// `name` on `PATH`, if it is there.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// GRUB's embedded configuration: find our FAT volume, load the image, boot it. Should any
/// step fail, say so on the console and power off rather than wait at a prompt. `serial`:
/// also write to COM1 (BIOS; UEFI firmware mirrors its console to the serial port itself).
fn grub_config(volume_id: u32, serial: bool) -> String {
    let terminal = if serial {
        "serial --unit=0 --speed=115200\nterminal_output serial console\n"
    } else {
        ""
    };
    format!(
        "set timeout=0\n\
         {terminal}\
         search --no-floppy --fs-uuid --set=root {}\n\
         multiboot2 {IMAGE_PATH}\n\
         boot\n\
         echo \"wasmvm: GRUB could not boot {IMAGE_PATH}\"\n\
         halt\n",
        fat_uuid(volume_id)
    )
}

/// How GRUB (and Linux's blkid) print a FAT volume serial number.
pub fn fat_uuid(volume_id: u32) -> String {
    format!("{:04x}-{:04x}", volume_id >> 16, volume_id & 0xffff)
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The raw disk's size in bytes (the virtual size of a qcow2).
    pub disk_size: u64,
    /// The FAT volume's serial number, as GRUB searches for it.
    pub volume_uuid: String,
}

/// Writes `image` (a packed wasmvm image) as a bootable disk at `out`, built in `scratch`
/// (an empty directory on `out`'s file system, which the caller removes afterwards: the
/// disk is renamed out of it when complete, so a failed or interrupted export leaves
/// nothing at `out`).
pub fn export(
    image: &[u8],
    out: &Path,
    format: DiskFormat,
    scratch: &Path,
) -> Result<Exported, DiskError> {
    Image::parse(image)?;
    if !multiboot2_loadable(image) {
        return Err(DiskError::NoMultiboot);
    }
    let grub = Grub::find()?;
    let qemu_img = match format {
        DiskFormat::Qcow2 => Some(find_in_path("qemu-img").ok_or(DiskError::MissingTool {
            tool: "qemu-img".into(),
            package: "qemu-utils",
        })?),
        DiskFormat::Raw => None,
    };

    // Everything derived from the image's digest: the same image gives the same disk.
    let digest: [u8; 32] = Sha256::digest(image).into();
    let volume_id = u32::from_le_bytes(digest[..4].try_into().expect("4 bytes"));
    let bios_config = scratch.join("grub-bios.cfg");
    std::fs::write(&bios_config, grub_config(volume_id, true)).map_err(io_at(&bios_config))?;
    let efi_config = scratch.join("grub-efi.cfg");
    std::fs::write(&efi_config, grub_config(volume_id, false)).map_err(io_at(&efi_config))?;
    let bios_modules = [COMMON_MODULES, BIOS_ONLY_MODULES].concat();
    let core = grub.mkimage("i386-pc", &bios_config, &bios_modules, scratch)?;
    let efi = grub.mkimage("x86_64-efi", &efi_config, COMMON_MODULES, scratch)?;
    let boot_img = {
        let path = grub.lib.join("i386-pc/boot.img");
        std::fs::read(&path).map_err(io_at(&path))?
    };

    let fat = fat_volume(image, &efi, volume_id)?;
    let disk = lay_out(&boot_img, &core, &fat, &digest)?;
    let raw_path = scratch.join("disk.raw");
    disk.write_to(&raw_path, &fat)?;

    let finished = match &qemu_img {
        Some(qemu_img) => {
            let qcow2 = scratch.join("disk.qcow2");
            let result = Command::new(qemu_img)
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw_path)
                .arg(&qcow2)
                .output()
                .map_err(io_at(qemu_img))?;
            if !result.status.success() {
                return Err(DiskError::ToolFailed {
                    tool: "qemu-img convert".into(),
                    message: String::from_utf8_lossy(&result.stderr).trim().to_string(),
                });
            }
            qcow2
        }
        None => raw_path,
    };
    std::fs::rename(&finished, out).map_err(io_at(out))?;
    Ok(Exported {
        disk_size: disk.sectors * SECTOR,
        volume_uuid: fat_uuid(volume_id),
    })
}

/// Whether GRUB can load the image as Multiboot2: a header 8-byte aligned in the file's
/// first 32 KiB, and the program headers there too (GRUB reads no further).
pub fn multiboot2_loadable(image: &[u8]) -> bool {
    let window = &image[..image.len().min(multiboot2::HEADER_SEARCH_LEN)];
    let phdrs_within = crate::image::elf::Elf::parse(image).is_ok_and(|elf| {
        elf.phoff as usize + elf.phdrs.len() * crate::image::elf::PHDR_LEN <= window.len()
    });
    phdrs_within
        && window.chunks_exact(8).any(|c| {
            let word = |i: usize| u32::from_le_bytes(c[i..i + 4].try_into().expect("4 bytes"));
            word(0) == multiboot2::HEADER_MAGIC && word(4) == multiboot2::ARCH_I386
        })
}

/// The EFI system partition: GRUB for UEFI and the image.
fn fat_volume(image: &[u8], efi: &[u8], volume_id: u32) -> Result<Vec<u8>, DiskError> {
    // Room for both files, the FAT structures and some slack; at least 64 MiB, so that
    // fatfs makes FAT16 or FAT32, which every UEFI reads.
    let content = (image.len() + efi.len()) as u64;
    let size = (content + content / 8 + (16 << 20))
        .max(64 << 20)
        .next_multiple_of(1 << 20);
    let mut volume = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut volume,
        fatfs::FormatVolumeOptions::new()
            .volume_id(volume_id)
            .volume_label(*b"WASMVM     "),
    )
    .map_err(DiskError::Fat)?;
    {
        let fs =
            fatfs::FileSystem::new(&mut volume, fatfs::FsOptions::new()).map_err(DiskError::Fat)?;
        let root = fs.root_dir();
        let write = |path: &str, bytes: &[u8]| -> io::Result<()> {
            let (dirs, name) = path
                .trim_start_matches('/')
                .rsplit_once('/')
                .expect("a dir");
            let mut dir = root.clone();
            for part in dirs.split('/') {
                dir = dir.create_dir(part)?;
            }
            let mut file = dir.create_file(name)?;
            file.truncate()?;
            file.write_all(bytes)?;
            file.flush()
        };
        write("/EFI/BOOT/BOOTX64.EFI", efi).map_err(DiskError::Fat)?;
        write(IMAGE_PATH, image).map_err(DiskError::Fat)?;
    }
    Ok(volume.into_inner())
}

/// The disk's fixed structures, ready to write around the FAT volume.
struct Layout {
    sectors: u64,
    /// (byte offset, bytes) to write.
    pieces: Vec<(u64, Vec<u8>)>,
}

impl Layout {
    fn write_to(&self, path: &Path, fat: &[u8]) -> Result<(), DiskError> {
        let file = File::create(path).map_err(io_at(path))?;
        // Sparse: the unwritten stretches of the FAT volume and the partitions stay holes.
        file.set_len(self.sectors * SECTOR).map_err(io_at(path))?;
        for (offset, bytes) in &self.pieces {
            file.write_all_at(bytes, *offset).map_err(io_at(path))?;
        }
        // Only the FAT volume's non-zero MiB.
        for (i, chunk) in fat.chunks(1 << 20).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                file.write_all_at(chunk, ESP_LBA * SECTOR + (i as u64) * (1 << 20))
                    .map_err(io_at(path))?;
            }
        }
        file.sync_all().map_err(io_at(path))
    }
}

/// Places boot code, partitions and both GPT copies.
fn lay_out(
    boot_img: &[u8],
    core: &[u8],
    fat: &[u8],
    digest: &[u8; 32],
) -> Result<Layout, DiskError> {
    if core.len() as u64 > BIOS_BOOT_SECTORS * SECTOR || core.len() < 512 {
        return Err(DiskError::CoreTooLarge(core.len()));
    }
    let fat_sectors = fat.len() as u64 / SECTOR;
    let esp_last = ESP_LBA + fat_sectors - 1;
    // The backup GPT follows the ESP; the whole disk is a whole number of MiB.
    let sectors = (esp_last + 1 + GPT_ENTRY_SECTORS + 1).next_multiple_of(2048);
    let last = sectors - 1;

    // GRUB for BIOS: boot.img in the MBR, told where core.img starts; core.img's first
    // sector told where the rest of it is (what grub-bios-setup does).
    let mut mbr = vec![0u8; SECTOR as usize];
    mbr[..440].copy_from_slice(&boot_img[..440]);
    mbr[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&BIOS_BOOT_LBA.to_le_bytes());
    mbr[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    // The protective partition: type 0xee over the whole disk (at most 2^32 − 1 sectors).
    let entry = &mut mbr[446..462];
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    entry[4] = 0xee;
    entry[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    entry[12..16].copy_from_slice(&((last).min(u32::MAX as u64) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;

    let mut core = core.to_vec();
    core.resize(core.len().next_multiple_of(SECTOR as usize), 0);
    let rest = (core.len() as u64 / SECTOR - 1) as u16;
    let blocklist = &mut core[DISKBOOT_BLOCKLIST..DISKBOOT_BLOCKLIST + 10];
    blocklist[0..8].copy_from_slice(&(BIOS_BOOT_LBA + 1).to_le_bytes());
    blocklist[8..10].copy_from_slice(&rest.to_le_bytes());

    let partitions = [
        GptPartition {
            kind: guid(BIOS_BOOT_TYPE),
            id: derived_guid(digest, 1),
            first: BIOS_BOOT_LBA,
            last: BIOS_BOOT_LBA + BIOS_BOOT_SECTORS - 1,
            name: "BIOS boot",
        },
        GptPartition {
            kind: guid(ESP_TYPE),
            id: derived_guid(digest, 2),
            first: ESP_LBA,
            last: esp_last,
            name: "EFI system",
        },
    ];
    let disk_id = derived_guid(digest, 0);
    let entries = gpt_entries(&partitions);
    let primary = gpt_header(&disk_id, 1, last, 2, last, &entries);
    let backup = gpt_header(&disk_id, last, 1, last - GPT_ENTRY_SECTORS, last, &entries);
    Ok(Layout {
        sectors,
        pieces: vec![
            (0, mbr),
            (SECTOR, primary),
            (2 * SECTOR, entries.clone()),
            (BIOS_BOOT_LBA * SECTOR, core),
            ((last - GPT_ENTRY_SECTORS) * SECTOR, entries),
            (last * SECTOR, backup),
        ],
    })
}

struct GptPartition {
    kind: [u8; 16],
    id: [u8; 16],
    first: u64,
    last: u64,
    name: &'static str,
}

/// A GUID in GPT's on-disk form: the first three fields little-endian.
fn guid(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text
        .split('-')
        .flat_map(|part| part.as_bytes().chunks(2))
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex"))
        .collect();
    let mut out = [0u8; 16];
    out.copy_from_slice(&hex);
    out[0..4].reverse();
    out[4..6].reverse();
    out[6..8].reverse();
    out
}

/// A random-looking (version 4 layout) but reproducible GUID from the image's digest.
fn derived_guid(digest: &[u8; 32], which: u8) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(digest);
    h.update([which]);
    let bytes: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 16];
    out.copy_from_slice(&bytes[..16]);
    out[7] = (out[7] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

fn gpt_entries(partitions: &[GptPartition]) -> Vec<u8> {
    let mut out = vec![0u8; (GPT_ENTRIES * GPT_ENTRY_LEN) as usize];
    for (p, entry) in partitions
        .iter()
        .zip(out.chunks_exact_mut(GPT_ENTRY_LEN as usize))
    {
        entry[0..16].copy_from_slice(&p.kind);
        entry[16..32].copy_from_slice(&p.id);
        entry[32..40].copy_from_slice(&p.first.to_le_bytes());
        entry[40..48].copy_from_slice(&p.last.to_le_bytes());
        for (i, unit) in p.name.encode_utf16().take(36).enumerate() {
            entry[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    out
}

fn gpt_header(
    disk_id: &[u8; 16],
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    last: u64,
    entries: &[u8],
) -> Vec<u8> {
    let mut h = vec![0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    // Usable: after the primary entries, before the backup ones.
    h[40..48].copy_from_slice(&(2 + GPT_ENTRY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&(last - GPT_ENTRY_SECTORS - 1).to_le_bytes());
    h[56..72].copy_from_slice(disk_id);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(GPT_ENTRY_LEN as u32).to_le_bytes());
    h[88..92].copy_from_slice(&crc32fast::hash(entries).to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_use_gpt_byte_order() {
        assert_eq!(
            guid(ESP_TYPE),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        let a = derived_guid(&[1; 32], 1);
        assert_ne!(a, derived_guid(&[1; 32], 2));
        assert_eq!(a[7] >> 4, 4);
    }

    #[test]
    fn layout_places_both_gpt_copies_and_patches_grub() {
        let boot = vec![0x90u8; 512];
        let core = vec![0x11u8; 3 * 512 + 7];
        let fat = vec![0u8; 64 << 20];
        let layout = lay_out(&boot, &core, &fat, &[7; 32]).unwrap();
        assert_eq!(layout.sectors % 2048, 0);
        let last = layout.sectors - 1;
        let piece = |offset: u64| {
            &layout
                .pieces
                .iter()
                .find(|(o, _)| *o == offset)
                .expect("piece")
                .1
        };
        let mbr = piece(0);
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
        assert_eq!(mbr[446 + 4], 0xee);
        assert_eq!(
            u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap()),
            BIOS_BOOT_LBA
        );
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        let core = piece(BIOS_BOOT_LBA * SECTOR);
        assert_eq!(
            u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
            BIOS_BOOT_LBA + 1
        );
        assert_eq!(u16::from_le_bytes([core[0x1fc], core[0x1fd]]), 3);
        for (at, alternate) in [(1, last), (last, 1)] {
            let h = piece(at * SECTOR);
            assert_eq!(&h[..8], b"EFI PART");
            let mut copy = h[..92].to_vec();
            copy[16..20].fill(0);
            assert_eq!(
                crc32fast::hash(&copy).to_le_bytes(),
                h[16..20],
                "header CRC"
            );
            assert_eq!(u64::from_le_bytes(h[32..40].try_into().unwrap()), alternate);
        }
        let esp_last = ESP_LBA + (64 << 20) / SECTOR - 1;
        let entries = piece(2 * SECTOR);
        assert_eq!(
            u64::from_le_bytes(entries[128 + 40..128 + 48].try_into().unwrap()),
            esp_last
        );
        assert!(esp_last < last - GPT_ENTRY_SECTORS);
    }

    #[test]
    fn config_searches_the_volume_and_boots_the_image() {
        let cfg = grub_config(0x1234_abcd, true);
        assert!(cfg.contains("--fs-uuid --set=root 1234-abcd"));
        assert!(cfg.contains("terminal_output serial"));
        assert!(!grub_config(1, false).contains("serial"));
        assert!(cfg.contains("multiboot2 /wasmvm/app.img"));
        assert_eq!(fat_uuid(0x0001_0002), "0001-0002");
    }
}
