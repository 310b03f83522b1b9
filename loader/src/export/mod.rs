//! Exporting a packed image for other platforms: a GPT cloud disk that BIOS and UEFI boot
//! through GRUB ([`disk`]), and a libvirt domain for it ([`libvirt`]).

pub mod disk;
pub mod libvirt;
pub mod oci;
