//! A libvirt domain for an exported disk image (`wasmvm image export --libvirt`): what
//! `virsh define` needs to run the disk as an ordinary VM, with the app's output on the
//! serial console.

use std::path::Path;

use crate::export::disk::DiskFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS: GRUB from the BIOS boot partition.
    Bios,
    /// OVMF: GRUB from the EFI system partition.
    Uefi,
}

/// What goes into the domain.
#[derive(Debug, Clone)]
pub struct Domain<'a> {
    pub name: &'a str,
    pub memory_mib: u64,
    pub disk: &'a Path,
    pub format: DiskFormat,
    pub firmware: Firmware,
    /// A libvirt network to attach a virtio NIC to (the app gets its address by DHCP).
    pub network: Option<&'a str>,
}

/// Escapes text for an XML attribute or element.
fn xml(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '\'' => "&apos;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

impl Domain<'_> {
    /// The domain XML. One vCPU (the kernel runs one), q35, ACPI (the kernel powers off
    /// through it when the app ends, and the domain then stops instead of rebooting).
    pub fn to_xml(&self) -> String {
        // GRUB from grub-mkimage is not signed for Secure Boot: ask for firmware without it
        // (libvirt's autoselection could pick a Secure Boot build with keys enrolled).
        let (firmware, firmware_features) = match self.firmware {
            Firmware::Bios => ("", ""),
            Firmware::Uefi => (
                " firmware='efi'",
                "    <firmware>\n      <feature enabled='no' name='secure-boot'/>\n    </firmware>\n",
            ),
        };
        let driver = match self.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        let network = self.network.map_or(String::new(), |net| {
            format!(
                "    <interface type='network'>\n      <source network='{}'/>\n      <model type='virtio'/>\n    </interface>\n",
                xml(net)
            )
        });
        format!(
            "<domain type='kvm'>\n\
             \x20 <name>{name}</name>\n\
             \x20 <description>wasmvm app image</description>\n\
             \x20 <memory unit='MiB'>{memory}</memory>\n\
             \x20 <vcpu>1</vcpu>\n\
             \x20 <os{firmware}>\n\
             {firmware_features}\
             \x20   <type arch='x86_64' machine='q35'>hvm</type>\n\
             \x20   <boot dev='hd'/>\n\
             \x20 </os>\n\
             \x20 <features>\n\
             \x20   <acpi/>\n\
             \x20 </features>\n\
             \x20 <on_poweroff>destroy</on_poweroff>\n\
             \x20 <on_reboot>destroy</on_reboot>\n\
             \x20 <on_crash>destroy</on_crash>\n\
             \x20 <devices>\n\
             \x20   <disk type='file' device='disk'>\n\
             \x20     <driver name='qemu' type='{driver}'/>\n\
             \x20     <source file='{disk}'/>\n\
             \x20     <target dev='vda' bus='virtio'/>\n\
             \x20   </disk>\n\
             {network}\
             \x20   <serial type='pty'>\n\
             \x20     <target port='0'/>\n\
             \x20   </serial>\n\
             \x20   <console type='pty'>\n\
             \x20     <target type='serial' port='0'/>\n\
             \x20   </console>\n\
             \x20   <memballoon model='none'/>\n\
             \x20 </devices>\n\
             </domain>\n",
            name = xml(self.name),
            memory = self.memory_mib,
            disk = xml(&self.disk.display().to_string()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_names_and_paths() {
        let d = Domain {
            name: "a<b>&'c",
            memory_mib: 256,
            disk: Path::new("/tmp/x&y.qcow2"),
            format: DiskFormat::Qcow2,
            firmware: Firmware::Uefi,
            network: Some("default"),
        };
        let x = d.to_xml();
        assert!(x.contains("<name>a&lt;b&gt;&amp;&apos;c</name>"));
        assert!(x.contains("file='/tmp/x&amp;y.qcow2'"));
        assert!(x.contains("<os firmware='efi'>"));
        assert!(x.contains("<feature enabled='no' name='secure-boot'/>"));
        assert!(x.contains("type='qcow2'"));
        assert!(x.contains("<source network='default'/>"));
    }
}
