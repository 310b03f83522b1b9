//! The check a volume image passes before anything else reads it: its geometry, then every
//! cluster chain and directory, each walk bounded by the volume's cluster count.
//!
//! Volume images come from users and may have been crafted. `fatfs` trusts what it reads: a
//! directory chain that loops makes it loop, and a file entry may claim 4 GiB over one
//! cluster. So the image is checked once, at open, by this module, which trusts nothing:
//!
//! - the boot sector's fields are in range, agree with each other and with the FAT type the
//!   cluster count implies, and the volume fits in the file (a truncated image is refused);
//! - each chain visits clusters in range, ends with an end-of-chain mark (not a free or bad
//!   cluster), and never visits a cluster another chain (or itself) has visited: a loop and a
//!   cross-link are the same finding, and since each cluster is visited at most once the
//!   whole walk is bounded by the cluster count;
//! - a file's size fits in its chain; a directory's entries point at clusters in range.
//!
//! The check reads the first FAT and the directories, never file data: its cost follows the
//! volume's metadata. After it, `fatfs` changes the volume only in consistent steps, so a
//! walk over the same image cannot meet damage unless another program changed it meanwhile
//! (the image is locked against other wasmvm runs, not against every process); `fatfs`
//! errors met then become `EIO` for the app.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Largest first FAT the check loads (a 2 TiB FAT32 volume with 32 KiB clusters needs
/// 256 MiB). Larger FATs are refused rather than read.
const MAX_FAT_BYTES: u64 = 256 << 20;
/// Bytes of a directory entry.
const DIR_ENTRY: usize = 32;
/// The largest directory FAT allows: 65536 entries.
const MAX_DIR_BYTES: u64 = 65536 * DIR_ENTRY as u64;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0f;

/// Why an image was refused, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// No FAT boot sector at all: most likely not a volume, rather than a damaged one.
    pub not_fat: bool,
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

fn damage<T>(what: impl Into<String>) -> Result<T, Damage> {
    Err(Damage {
        not_fat: false,
        what: what.into(),
    })
}

fn not_fat<T>(what: &str) -> Result<T, Damage> {
    Err(Damage {
        not_fat: true,
        what: what.into(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// The layout of a FAT volume, from its boot sector, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub fat_type: FatType,
    pub bytes_per_sector: u64,
    pub cluster_bytes: u64,
    /// Byte offset of the first FAT.
    pub fat_offset: u64,
    pub fat_bytes: u64,
    /// Copies of the FAT (1 or 2), one after the other.
    pub fats: u64,
    /// Byte offset and length of the FAT12/16 root directory region (0 on FAT32).
    pub root_offset: u64,
    pub root_bytes: u64,
    /// Byte offset of cluster 2.
    pub data_offset: u64,
    /// Data clusters: valid cluster numbers are `2..2 + clusters`.
    pub clusters: u32,
    /// The FAT32 root directory's first cluster.
    pub root_cluster: u32,
    /// The volume's length in bytes (at most the file's).
    pub volume_bytes: u64,
}

impl Geometry {
    /// Reads and checks the boot sector of an image of `file_len` bytes.
    pub fn parse(boot: &[u8; 512], file_len: u64) -> Result<Geometry, Damage> {
        let u8_at = |o: usize| boot[o];
        let u16_at = |o: usize| u16::from_le_bytes([boot[o], boot[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([boot[o], boot[o + 1], boot[o + 2], boot[o + 3]]);
        if u16_at(510) != 0xaa55 {
            return not_fat("the boot sector has no 55AA signature");
        }
        let bytes_per_sector = u16_at(11);
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return damage(format!("{bytes_per_sector} bytes per sector"));
        }
        let sectors_per_cluster = u8_at(13);
        if !sectors_per_cluster.is_power_of_two() {
            return damage(format!("{sectors_per_cluster} sectors per cluster"));
        }
        let bps = u64::from(bytes_per_sector);
        let cluster_bytes = bps * u64::from(sectors_per_cluster);
        if cluster_bytes > 64 << 10 {
            return damage(format!("{cluster_bytes}-byte clusters"));
        }
        let reserved = u64::from(u16_at(14));
        let fats = u64::from(u8_at(16));
        if reserved == 0 || !(1..=2).contains(&fats) {
            return damage(format!("{reserved} reserved sectors, {fats} FATs"));
        }
        let root_entries = u64::from(u16_at(17));
        let total_sectors = match u16_at(19) {
            0 => u64::from(u32_at(32)),
            n => u64::from(n),
        };
        let sectors_per_fat = match u16_at(22) {
            0 => u64::from(u32_at(36)),
            n => u64::from(n),
        };
        if sectors_per_fat == 0 {
            return damage("a FAT of no sectors");
        }
        let root_sectors = (root_entries * DIR_ENTRY as u64).div_ceil(bps);
        let data_sector = reserved + fats * sectors_per_fat + root_sectors;
        if data_sector >= total_sectors {
            return damage("no room for data after the FATs");
        }
        let volume_bytes = total_sectors * bps;
        if volume_bytes > file_len {
            return damage(format!(
                "the volume claims {volume_bytes} bytes but the file has {file_len}"
            ));
        }
        let clusters = (total_sectors - data_sector) / u64::from(sectors_per_cluster);
        let fat_type = match clusters {
            0 => return damage("no data clusters"),
            1..4085 => FatType::Fat12,
            4085..65525 => FatType::Fat16,
            _ => FatType::Fat32,
        };
        // The largest FAT32 cluster number is 0x0FFFFFF6.
        let clusters = u32::try_from(clusters)
            .ok()
            .filter(|&c| c <= 0x0fff_fff5)
            .ok_or_else(|| Damage {
                not_fat: false,
                what: format!("{clusters} clusters"),
            })?;
        let fat32 = fat_type == FatType::Fat32;
        if fat32 != (root_entries == 0) || fat32 != (u16_at(22) == 0) {
            return damage("the boot sector mixes FAT32 and FAT12/16 fields");
        }
        let bits = match fat_type {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        };
        let fat_bytes = sectors_per_fat * bps;
        if fat_bytes * 8 < (u64::from(clusters) + 2) * bits {
            return damage("the FAT is too small for the clusters");
        }
        if fat_bytes > MAX_FAT_BYTES {
            return damage(format!("a {fat_bytes}-byte FAT (more than wasmvm reads)"));
        }
        let root_cluster = if fat32 { u32_at(44) } else { 0 };
        if fat32 && u16_at(40) & 0x80 != 0 {
            // fatfs would then read FAT number `flags & 15`, which this check does not.
            return damage(format!(
                "FAT mirroring is off (active FAT {})",
                u16_at(40) & 0xf
            ));
        }
        if fat32 {
            let fs_info = u64::from(u16_at(48));
            if fs_info == 0 || fs_info >= reserved {
                return damage("the FSInfo sector is outside the reserved sectors");
            }
            if !(2..clusters + 2).contains(&root_cluster) {
                return damage(format!("root directory cluster {root_cluster}"));
            }
        }
        Ok(Geometry {
            fat_type,
            bytes_per_sector: bps,
            cluster_bytes,
            fat_offset: reserved * bps,
            fat_bytes,
            fats,
            root_offset: (reserved + fats * sectors_per_fat) * bps,
            root_bytes: root_sectors * bps,
            data_offset: data_sector * bps,
            clusters,
            root_cluster,
            volume_bytes,
        })
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + u64::from(cluster - 2) * self.cluster_bytes
    }
}

/// What one FAT entry says comes after a cluster.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Cluster(u32),
    End,
    Free,
    Bad,
}

struct Fat<'a> {
    bytes: &'a [u8],
    ty: FatType,
}

impl Fat<'_> {
    fn next(&self, cluster: u32) -> Next {
        let n = cluster as usize;
        let get = |o: usize, len: usize| -> u32 {
            let mut b = [0u8; 4];
            b[..len].copy_from_slice(&self.bytes[o..o + len]);
            u32::from_le_bytes(b)
        };
        let (value, end, bad) = match self.ty {
            FatType::Fat12 => {
                let pair = get(n + n / 2, 2);
                let v = if n.is_multiple_of(2) {
                    pair & 0xfff
                } else {
                    pair >> 4
                };
                (v, 0xff8, 0xff7)
            }
            FatType::Fat16 => (get(2 * n, 2), 0xfff8, 0xfff7),
            FatType::Fat32 => (get(4 * n, 4) & 0x0fff_ffff, 0x0fff_fff8, 0x0fff_fff7),
        };
        match value {
            0 => Next::Free,
            v if v >= end => Next::End,
            v if v == bad => Next::Bad,
            v => Next::Cluster(v),
        }
    }
}

/// What the check found in a sound image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub geometry: Geometry,
    pub files: u64,
    pub directories: u64,
    /// Clusters no chain uses.
    pub free_clusters: u32,
    /// Clusters marked in use that no chain reaches: what a writer killed between
    /// allocating a cluster and recording it in a directory entry leaves.
    pub lost_clusters: u32,
    /// The FAT as it should be written to every copy, when the image needs that: lost
    /// clusters freed, and the copies made equal again (a writer killed between updating
    /// the first copy and the second leaves them different).
    pub repaired_fat: Option<Vec<u8>>,
    /// Directory entries to rewrite (image offset, the 32 bytes): what an operation killed
    /// halfway left (see [`check`]).
    pub repaired_entries: Vec<(u64, [u8; 32])>,
}

/// Checks the image `file` of `file_len` bytes; see the module docs.
pub fn check(file: &File, file_len: u64) -> Result<Summary, Damage> {
    let read = |offset: u64, len: u64| -> Result<Vec<u8>, Damage> {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset).map_err(|e| Damage {
            not_fat: false,
            what: format!("reading {len} bytes at {offset}: {e}"),
        })?;
        Ok(buf)
    };
    if file_len < 512 {
        return not_fat("shorter than a boot sector");
    }
    let mut boot = [0u8; 512];
    file.read_exact_at(&mut boot, 0).map_err(|e| Damage {
        not_fat: false,
        what: format!("reading the boot sector: {e}"),
    })?;
    let geometry = Geometry::parse(&boot, file_len)?;
    let fat_bytes = read(geometry.fat_offset, geometry.fat_bytes)?;
    let mut walk = Walk {
        g: geometry,
        fat: Fat {
            bytes: &fat_bytes,
            ty: geometry.fat_type,
        },
        seen: vec![0u64; (geometry.clusters as usize + 2).div_ceil(64)],
        files: 0,
        directories: 1,
        repairs: Vec::new(),
        firsts: std::collections::HashMap::new(),
    };
    // Directories still to read: their entries' bytes, where they lie (the chain; empty for
    // the FAT12/16 root region), and a name for messages.
    let mut pending: Vec<(Vec<u8>, Vec<u32>, String)> = Vec::new();
    let root = match geometry.fat_type {
        FatType::Fat32 => {
            let chain = walk.chain(geometry.root_cluster, "/")?;
            (walk.read_chain(&chain, &read)?, chain)
        }
        _ => (read(geometry.root_offset, geometry.root_bytes)?, Vec::new()),
    };
    pending.push((root.0, root.1, "/".into()));
    while let Some((entries, chain, dir_name)) = pending.pop() {
        let at = |i: usize| -> u64 {
            let byte = (i * DIR_ENTRY) as u64;
            match chain.get((byte / geometry.cluster_bytes) as usize) {
                Some(&c) => geometry.cluster_offset(c) + byte % geometry.cluster_bytes,
                None => geometry.root_offset + byte,
            }
        };
        // Where the long-name entries of the entry at hand begin.
        let mut long_name_from: Option<usize> = None;
        for (i, raw) in entries.chunks_exact(DIR_ENTRY).enumerate() {
            match raw[0] {
                0x00 => break,
                0xe5 => {
                    long_name_from = None;
                    continue;
                }
                _ => {}
            }
            let attr = raw[11];
            if attr & ATTR_LONG_NAME == ATTR_LONG_NAME {
                long_name_from.get_or_insert(i);
                continue;
            }
            let long_name = long_name_from.take().unwrap_or(i)..i;
            if attr & ATTR_VOLUME_ID != 0 {
                continue;
            }
            let short = short_name(raw);
            if short == "." || short == ".." {
                // Only a subdirectory's first entries (after long-name entries that older
                // wasmvm versions wrote before them); they are never followed. Anywhere
                // else fatfs would serve one under its long name, unchecked.
                if dir_name == "/" || i >= 4 || attr & ATTR_DIRECTORY == 0 {
                    return damage(format!("{dir_name}: an entry named {short:?} out of place"));
                }
                continue;
            }
            let mut entry: [u8; 32] = raw.try_into().unwrap_or([0; 32]);
            // Marks the entry and its long-name entries deleted.
            let deleted = |entry: &mut [u8; 32], repairs: &mut Vec<(u64, [u8; 32])>| {
                for j in long_name.clone() {
                    let mut part: [u8; 32] = entries[j * DIR_ENTRY..(j + 1) * DIR_ENTRY]
                        .try_into()
                        .unwrap_or([0; 32]);
                    part[0] = 0xe5;
                    repairs.push((at(j), part));
                }
                entry[0] = 0xe5;
                repairs.push((at(i), *entry));
            };
            let name = format!("{}{short}", dir_name.trim_end_matches('/').to_owned() + "/");
            let cluster_hi = if geometry.fat_type == FatType::Fat32 {
                u32::from(u16::from_le_bytes([raw[20], raw[21]])) << 16
            } else {
                0
            };
            let first = cluster_hi | u32::from(u16::from_le_bytes([raw[26], raw[27]]));
            let size = u32::from_le_bytes([raw[28], raw[29], raw[30], raw[31]]);
            // A second entry for a chain already walked, of the same kind and size: a rename
            // killed between writing the new entry and freeing the old (vendored fatfs writes
            // the new one first). Keep one.
            let is_dir = attr & ATTR_DIRECTORY != 0;
            if first != 0 && walk.firsts.get(&first) == Some(&(size, is_dir)) {
                deleted(&mut entry, &mut walk.repairs);
                continue;
            }
            // An entry whose first cluster is free is one a killed remove or truncate had
            // begun on (fatfs frees the chain first, then writes the entry).
            let first_free = (2..geometry.clusters + 2).contains(&first)
                && walk.fat.next(first) == Next::Free
                && walk.seen[first as usize / 64] & 1 << (first % 64) == 0;
            if attr & ATTR_DIRECTORY != 0 {
                if first == 0 || first_free {
                    // A directory without its cluster: a killed mkdir or rmdir.
                    deleted(&mut entry, &mut walk.repairs);
                    continue;
                }
                walk.directories += 1;
                let chain = walk.chain(first, &name)?;
                walk.firsts.insert(first, (size, true));
                pending.push((walk.read_chain(&chain, &read)?, chain, name));
            } else {
                walk.files += 1;
                if first_free {
                    // A killed remove or truncate to zero: the file is left empty.
                    entry[20..22].fill(0);
                    entry[26..32].fill(0);
                    walk.repairs.push((at(i), entry));
                    continue;
                }
                let clusters = match first {
                    0 => 0,
                    first => {
                        let clusters = walk.chain(first, &name)?.len() as u64;
                        walk.firsts.insert(first, (size, false));
                        clusters
                    }
                };
                // Longer than its chain: a killed truncate (it frees clusters before it
                // writes the new size). The size the chain holds is what there is.
                let holds = clusters * geometry.cluster_bytes;
                if u64::from(size) > holds {
                    entry[28..32].copy_from_slice(&(holds as u32).to_le_bytes());
                    walk.repairs.push((at(i), entry));
                }
            }
        }
    }
    let mut free_clusters = 0;
    let mut lost = Vec::new();
    for cluster in 2..geometry.clusters + 2 {
        match walk.fat.next(cluster) {
            Next::Free => free_clusters += 1,
            Next::Bad => {}
            _ if walk.seen[cluster as usize / 64] & 1 << (cluster % 64) == 0 => lost.push(cluster),
            _ => {}
        }
    }
    let (files, directories) = (walk.files, walk.directories);
    let repaired_entries = std::mem::take(&mut walk.repairs);
    drop(walk);
    let copies_differ = geometry.fats > 1
        && read(geometry.fat_offset + geometry.fat_bytes, geometry.fat_bytes)? != fat_bytes;
    let lost_clusters = lost.len() as u32;
    let repaired_fat = (!lost.is_empty() || copies_differ).then(|| {
        let mut fat = fat_bytes;
        for cluster in lost {
            set_free(&mut fat, geometry.fat_type, cluster);
        }
        fat
    });
    Ok(Summary {
        geometry,
        files,
        directories,
        free_clusters: free_clusters + lost_clusters,
        lost_clusters,
        repaired_fat,
        repaired_entries,
    })
}

/// Marks `cluster` free in the FAT bytes `fat`.
fn set_free(fat: &mut [u8], ty: FatType, cluster: u32) {
    let n = cluster as usize;
    match ty {
        FatType::Fat12 => {
            let o = n + n / 2;
            if n.is_multiple_of(2) {
                fat[o] = 0;
                fat[o + 1] &= 0xf0;
            } else {
                fat[o] &= 0x0f;
                fat[o + 1] = 0;
            }
        }
        FatType::Fat16 => fat[2 * n..2 * n + 2].fill(0),
        // The top four bits are reserved and kept.
        FatType::Fat32 => {
            fat[4 * n..4 * n + 3].fill(0);
            fat[4 * n + 3] &= 0xf0;
        }
    }
}

struct Walk<'a> {
    g: Geometry,
    fat: Fat<'a>,
    /// One bit per cluster number: already part of a chain.
    seen: Vec<u64>,
    files: u64,
    directories: u64,
    repairs: Vec<(u64, [u8; 32])>,
    /// The first cluster of each entry walked, with its size and whether it is a directory.
    firsts: std::collections::HashMap<u32, (u32, bool)>,
}

impl Walk<'_> {
    /// The clusters of the chain starting at `first`, each marked seen. Loops, cross-links,
    /// free, bad or out-of-range clusters inside a chain are damage: no fatfs operation,
    /// even one killed halfway, leaves them (it ends a chain before it frees the rest).
    fn chain(&mut self, first: u32, name: &str) -> Result<Vec<u32>, Damage> {
        let mut chain = Vec::new();
        let mut cluster = first;
        loop {
            if !(2..self.g.clusters + 2).contains(&cluster) {
                return damage(format!("{name}: cluster {cluster} is out of range"));
            }
            let (word, bit) = (cluster as usize / 64, cluster % 64);
            if self.seen[word] & 1 << bit != 0 {
                return damage(format!(
                    "{name}: its cluster chain loops or crosses another at cluster {cluster}"
                ));
            }
            self.seen[word] |= 1 << bit;
            chain.push(cluster);
            match self.fat.next(cluster) {
                Next::End => return Ok(chain),
                Next::Cluster(next) => cluster = next,
                Next::Free => return damage(format!("{name}: its chain runs into a free cluster")),
                Next::Bad => return damage(format!("{name}: its chain runs into a bad cluster")),
            }
        }
    }

    /// The bytes of a directory's chain (at most FAT's 65536 entries: a crafted chain
    /// through a huge sparse image must not become a huge read).
    fn read_chain(
        &self,
        chain: &[u32],
        read: &dyn Fn(u64, u64) -> Result<Vec<u8>, Damage>,
    ) -> Result<Vec<u8>, Damage> {
        if chain.len() as u64 * self.g.cluster_bytes > MAX_DIR_BYTES {
            return damage(format!(
                "a directory of {} clusters, more than FAT's 65536 entries",
                chain.len()
            ));
        }
        let mut bytes = Vec::with_capacity(chain.len() * self.g.cluster_bytes as usize);
        for &cluster in chain {
            bytes.extend(read(self.g.cluster_offset(cluster), self.g.cluster_bytes)?);
        }
        Ok(bytes)
    }
}

/// The 8.3 name of an entry, for messages (`NAME.EXT`).
fn short_name(raw: &[u8]) -> String {
    let part = |b: &[u8]| String::from_utf8_lossy(b).trim_end_matches(' ').to_string();
    let (base, ext) = (part(&raw[0..8]), part(&raw[8..11]));
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}
