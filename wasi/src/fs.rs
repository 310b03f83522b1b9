//! An in-memory filesystem: the tree behind preopened directories packed into an image.
//! Pure data structure with WASI's path rules; the descriptor layer lives in `state.rs`.
//!
//! Paths are resolved beneath a starting directory the way wasmtime's capability model does:
//! absolute paths, and `..` or symlinks that would climb above the directory the walk
//! started from, fail with `EPERM` (as wasmtime's cap-std does); symlinks nest at most [`MAX_SYMLINKS`] deep.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::errno::{Errno, WasiResult};

pub type Ino = u64;
pub const ROOT: Ino = 1;
/// Symlinks followed in one resolution before `ELOOP`.
pub const MAX_SYMLINKS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    /// Entries by name, and the parent directory (the root is its own parent).
    Dir(BTreeMap<Vec<u8>, Ino>, Ino),
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    pub nlink: u64,
    pub atim: u64,
    pub mtim: u64,
    pub ctim: u64,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(..))
    }
}

#[derive(Debug, Clone)]
pub struct Fs {
    nodes: BTreeMap<Ino, Node>,
    next: Ino,
}

impl Default for Fs {
    fn default() -> Self {
        Self::new()
    }
}

/// The result of walking to the parent of a path's last component.
pub struct Parent<'p> {
    pub dir: Ino,
    pub name: &'p [u8],
    /// The path ended in `/`: its target must be a directory.
    pub trailing_slash: bool,
}

impl Fs {
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: Kind::Dir(BTreeMap::new(), ROOT),
                nlink: 2,
                atim: 0,
                mtim: 0,
                ctim: 0,
            },
        );
        Fs {
            nodes,
            next: ROOT + 1,
        }
    }

    pub fn node(&self, ino: Ino) -> WasiResult<&Node> {
        self.nodes.get(&ino).ok_or(Errno::BADF)
    }

    pub fn node_mut(&mut self, ino: Ino) -> WasiResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::BADF)
    }

    fn entries(&self, dir: Ino) -> WasiResult<&BTreeMap<Vec<u8>, Ino>> {
        match &self.node(dir)?.kind {
            Kind::Dir(entries, _) => Ok(entries),
            _ => Err(Errno::NOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: Ino) -> WasiResult<&mut BTreeMap<Vec<u8>, Ino>> {
        match &mut self.node_mut(dir)?.kind {
            Kind::Dir(entries, _) => Ok(entries),
            _ => Err(Errno::NOTDIR),
        }
    }

    /// Directory entries in name order, for `fd_readdir`.
    pub fn list(&self, dir: Ino) -> WasiResult<Vec<(Vec<u8>, Ino)>> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect())
    }

    pub fn parent_of(&self, dir: Ino) -> WasiResult<Ino> {
        match self.node(dir)?.kind {
            Kind::Dir(_, parent) => Ok(parent),
            _ => Err(Errno::NOTDIR),
        }
    }

    /// Walks `path` from directory `start` to the directory holding its last component.
    /// Symlinks among the leading components are followed.
    pub fn parent<'p>(&self, start: Ino, path: &'p [u8]) -> WasiResult<Parent<'p>> {
        let (dir_part, name, trailing_slash) = split_parent(path)?;
        let mut depth = Vec::new();
        let mut links = 0;
        let dir = self.walk(start, dir_part, &mut depth, &mut links)?;
        Ok(Parent {
            dir,
            name,
            trailing_slash,
        })
    }

    /// Resolves `path` from `start`; the last component is followed if it is a symlink and
    /// `follow` is set.
    pub fn lookup(&self, start: Ino, path: &[u8], follow: bool) -> WasiResult<Ino> {
        if path.is_empty() {
            return Err(Errno::NOENT);
        }
        if path[0] == b'/' {
            return Err(Errno::PERM);
        }
        let mut depth = Vec::new();
        let mut links = 0;
        let ino = if follow {
            self.walk(start, path, &mut depth, &mut links)?
        } else {
            let p = self.parent(start, path)?;
            let ino = self.step(p.dir, p.name, &mut depth)?;
            if p.trailing_slash {
                // `name/` names the directory a symlink points to even with NOFOLLOW.
                self.walk(start, path, &mut Vec::new(), &mut 0)?
            } else {
                ino
            }
        };
        if path.ends_with(b"/") && !self.node(ino)?.is_dir() {
            return Err(Errno::NOTDIR);
        }
        Ok(ino)
    }

    /// One component from `dir` without following a symlink; `.` and `..` handled, with
    /// `depth` tracking how far below the walk's start we are.
    fn step(&self, dir: Ino, name: &[u8], depth: &mut Vec<Ino>) -> WasiResult<Ino> {
        match name {
            b"" | b"." => Ok(dir),
            b".." => {
                self.entries(dir)?;
                depth.pop().ok_or(Errno::PERM)
            }
            _ => {
                let ino = *self.entries(dir)?.get(name).ok_or(Errno::NOENT)?;
                depth.push(dir);
                Ok(ino)
            }
        }
    }

    /// Follows every component of `path` from `dir`, symlinks included.
    fn walk(
        &self,
        mut dir: Ino,
        path: &[u8],
        depth: &mut Vec<Ino>,
        links: &mut usize,
    ) -> WasiResult<Ino> {
        for name in path.split(|&b| b == b'/') {
            let parent = dir;
            let parent_depth = depth.len();
            let next = self.step(dir, name, depth)?;
            dir = match &self.node(next)?.kind {
                Kind::Symlink(target) => {
                    *links += 1;
                    if *links > MAX_SYMLINKS {
                        return Err(Errno::LOOP);
                    }
                    if target.first() == Some(&b'/') {
                        return Err(Errno::PERM);
                    }
                    depth.truncate(parent_depth);
                    let target = target.clone();
                    self.walk(parent, &target, depth, links)?
                }
                _ => next,
            };
        }
        Ok(dir)
    }

    fn alloc(&mut self, kind: Kind, now: u64) -> Ino {
        let ino = self.next;
        self.next += 1;
        let nlink = if matches!(kind, Kind::Dir(..)) { 2 } else { 1 };
        self.nodes.insert(
            ino,
            Node {
                kind,
                nlink,
                atim: now,
                mtim: now,
                ctim: now,
            },
        );
        ino
    }

    pub(crate) fn check_name(name: &[u8]) -> WasiResult {
        match name {
            b"" | b"." | b".." => Err(Errno::EXIST),
            _ if name.contains(&0) => Err(Errno::INVAL),
            _ => Ok(()),
        }
    }

    /// Adds a new node called `name` in `dir`.
    pub fn create(&mut self, dir: Ino, name: &[u8], kind: Kind, now: u64) -> WasiResult<Ino> {
        Self::check_name(name)?;
        if self.entries(dir)?.contains_key(name) {
            return Err(Errno::EXIST);
        }
        let kind = match kind {
            Kind::Dir(entries, _) => Kind::Dir(entries, dir),
            k => k,
        };
        let is_dir = matches!(kind, Kind::Dir(..));
        let ino = self.alloc(kind, now);
        self.entries_mut(dir)?.insert(name.to_vec(), ino);
        let parent = self.node_mut(dir)?;
        parent.mtim = now;
        if is_dir {
            parent.nlink += 1;
        }
        Ok(ino)
    }

    /// Creates every missing directory of `path` below the root (for packing preopens).
    pub fn mkdir_all(&mut self, path: &[u8]) -> WasiResult<Ino> {
        let mut dir = ROOT;
        for name in path
            .split(|&b| b == b'/')
            .filter(|n| !n.is_empty() && *n != b".")
        {
            dir = match self.entries(dir)?.get(name) {
                Some(&ino) => ino,
                None => self.create(dir, name, Kind::Dir(BTreeMap::new(), 0), 0)?,
            };
        }
        Ok(dir)
    }

    /// Removes the entry `name` from `dir`: a non-directory (`dir_wanted` false) or an empty
    /// directory (`dir_wanted` true).
    pub fn remove(&mut self, dir: Ino, name: &[u8], dir_wanted: bool, now: u64) -> WasiResult {
        if name == b"." || name == b".." {
            return Err(if dir_wanted {
                Errno::INVAL
            } else {
                Errno::ISDIR
            });
        }
        let ino = *self.entries(dir)?.get(name).ok_or(Errno::NOENT)?;
        let node = self.node(ino)?;
        match (&node.kind, dir_wanted) {
            (Kind::Dir(entries, _), true) if !entries.is_empty() => return Err(Errno::NOTEMPTY),
            (Kind::Dir(..), false) => return Err(Errno::ISDIR),
            (Kind::Dir(..), true) => {}
            (_, true) => return Err(Errno::NOTDIR),
            (_, false) => {}
        }
        self.entries_mut(dir)?.remove(name);
        let parent = self.node_mut(dir)?;
        parent.mtim = now;
        if dir_wanted {
            parent.nlink -= 1;
        }
        self.unref(ino, now);
        Ok(())
    }

    /// Drops one name of `ino`. The node itself stays in the table, so a descriptor still
    /// open on an unlinked file keeps working, as on POSIX; its memory is reclaimed at the
    /// end of the run, not when the last descriptor closes.
    fn unref(&mut self, ino: Ino, now: u64) {
        if let Ok(node) = self.node_mut(ino) {
            node.nlink = node.nlink.saturating_sub(if node.is_dir() { 2 } else { 1 });
            node.ctim = now;
        }
    }

    /// Renames `from_dir/from` to `to_dir/to` with POSIX `rename` rules.
    pub fn rename(
        &mut self,
        from_dir: Ino,
        from: &[u8],
        to_dir: Ino,
        to: &[u8],
        now: u64,
    ) -> WasiResult {
        if from == b"." || from == b".." || to == b"." || to == b".." {
            return Err(Errno::BUSY);
        }
        Self::check_name(to)?;
        let ino = *self.entries(from_dir)?.get(from).ok_or(Errno::NOENT)?;
        let moving_dir = self.node(ino)?.is_dir();
        if moving_dir {
            // A directory cannot move into itself or below.
            let mut d = to_dir;
            loop {
                if d == ino {
                    return Err(Errno::INVAL);
                }
                let p = self.parent_of(d)?;
                if p == d {
                    break;
                }
                d = p;
            }
        }
        if let Some(&existing) = self.entries(to_dir)?.get(to) {
            if existing == ino {
                return Ok(());
            }
            match (&self.node(existing)?.kind, moving_dir) {
                (Kind::Dir(entries, _), true) if !entries.is_empty() => {
                    return Err(Errno::NOTEMPTY);
                }
                (Kind::Dir(..), false) => return Err(Errno::ISDIR),
                (Kind::Dir(..), true) => self.remove(to_dir, to, true, now)?,
                (_, true) => return Err(Errno::NOTDIR),
                (_, false) => self.remove(to_dir, to, false, now)?,
            }
        }
        self.entries_mut(from_dir)?.remove(from);
        self.entries_mut(to_dir)?.insert(to.to_vec(), ino);
        if moving_dir {
            self.node_mut(from_dir)?.nlink -= 1;
            self.node_mut(to_dir)?.nlink += 1;
            if let Kind::Dir(_, parent) = &mut self.node_mut(ino)?.kind {
                *parent = to_dir;
            }
        }
        for d in [from_dir, to_dir] {
            self.node_mut(d)?.mtim = now;
        }
        self.node_mut(ino)?.ctim = now;
        Ok(())
    }

    /// A hard link to the non-directory `ino` as `dir/name`.
    pub fn link(&mut self, ino: Ino, dir: Ino, name: &[u8], now: u64) -> WasiResult {
        Self::check_name(name)?;
        if self.node(ino)?.is_dir() {
            return Err(Errno::PERM);
        }
        if self.entries(dir)?.contains_key(name) {
            return Err(Errno::EXIST);
        }
        self.entries_mut(dir)?.insert(name.to_vec(), ino);
        let node = self.node_mut(ino)?;
        node.nlink += 1;
        node.ctim = now;
        self.node_mut(dir)?.mtim = now;
        Ok(())
    }
}

/// Splits a relative path into its directory part, its last component and whether it ended
/// in `/`; an empty path is `ENOENT`, an absolute one `EPERM` (it would leave the preopen).
pub(crate) fn split_parent(path: &[u8]) -> WasiResult<(&[u8], &[u8], bool)> {
    if path.is_empty() {
        return Err(Errno::NOENT);
    }
    if path[0] == b'/' {
        return Err(Errno::PERM);
    }
    let trailing_slash = path.ends_with(b"/");
    let trimmed = trim_trailing_slashes(path);
    Ok(match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..], trailing_slash),
        None => (&b""[..], trimmed, trailing_slash),
    })
}

pub(crate) fn trim_trailing_slashes(path: &[u8]) -> &[u8] {
    let mut end = path.len();
    while end > 1 && path[end - 1] == b'/' {
        end -= 1;
    }
    &path[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(fs: &mut Fs, dir: Ino, name: &[u8], data: &[u8]) -> Ino {
        fs.create(dir, name, Kind::File(data.to_vec()), 1).unwrap()
    }

    #[test]
    fn lookup_confines_paths_beneath_the_start() {
        let mut fs = Fs::new();
        let sub = fs.mkdir_all(b"a/b").unwrap();
        let f = file(&mut fs, sub, b"f", b"x");
        assert_eq!(fs.lookup(ROOT, b"a/b/f", true), Ok(f));
        assert_eq!(fs.lookup(ROOT, b"a/./b/../b/f", true), Ok(f));
        assert_eq!(fs.lookup(ROOT, b"..", true), Err(Errno::PERM));
        assert_eq!(fs.lookup(sub, b"../b/f", true), Err(Errno::PERM));
        assert_eq!(fs.lookup(ROOT, b"/a", true), Err(Errno::PERM));
        assert_eq!(fs.lookup(ROOT, b"a/b/f/", true), Err(Errno::NOTDIR));
        assert_eq!(fs.lookup(ROOT, b"a/b/f/x", true), Err(Errno::NOTDIR));
        assert_eq!(fs.lookup(ROOT, b"a/nope", true), Err(Errno::NOENT));
        assert_eq!(fs.lookup(ROOT, b"", true), Err(Errno::NOENT));
    }

    #[test]
    fn symlinks_are_followed_within_bounds() {
        let mut fs = Fs::new();
        let a = fs.mkdir_all(b"a").unwrap();
        let f = file(&mut fs, a, b"f", b"x");
        let link = fs
            .create(ROOT, b"l", Kind::Symlink(b"a/f".to_vec()), 1)
            .unwrap();
        fs.create(a, b"up", Kind::Symlink(b"../a".to_vec()), 1)
            .unwrap();
        fs.create(ROOT, b"out", Kind::Symlink(b"../x".to_vec()), 1)
            .unwrap();
        fs.create(ROOT, b"abs", Kind::Symlink(b"/etc".to_vec()), 1)
            .unwrap();
        fs.create(ROOT, b"loop", Kind::Symlink(b"loop".to_vec()), 1)
            .unwrap();
        assert_eq!(fs.lookup(ROOT, b"l", true), Ok(f));
        assert_eq!(fs.lookup(ROOT, b"l", false), Ok(link));
        assert_eq!(fs.lookup(ROOT, b"a/up/f", true), Ok(f));
        assert_eq!(fs.lookup(ROOT, b"out", true), Err(Errno::PERM));
        assert_eq!(fs.lookup(ROOT, b"abs", true), Err(Errno::PERM));
        assert_eq!(fs.lookup(ROOT, b"loop", true), Err(Errno::LOOP));
    }

    #[test]
    fn create_remove_rename_keep_links_right() {
        let mut fs = Fs::new();
        let d = fs.mkdir_all(b"d").unwrap();
        assert_eq!(fs.node(ROOT).unwrap().nlink, 3);
        file(&mut fs, d, b"f", b"x");
        assert_eq!(
            fs.create(d, b"f", Kind::File(Vec::new()), 1),
            Err(Errno::EXIST)
        );
        assert_eq!(fs.remove(ROOT, b"d", true, 2), Err(Errno::NOTEMPTY));
        assert_eq!(fs.remove(ROOT, b"d", false, 2), Err(Errno::ISDIR));
        assert_eq!(fs.remove(d, b"f", true, 2), Err(Errno::NOTDIR));
        fs.rename(d, b"f", ROOT, b"g", 3).unwrap();
        assert!(fs.lookup(ROOT, b"g", true).is_ok());
        assert_eq!(fs.rename(ROOT, b"d", d, b"inside", 3), Err(Errno::INVAL));
        fs.remove(ROOT, b"d", true, 4).unwrap();
        assert_eq!(fs.node(ROOT).unwrap().nlink, 2);
        let g = fs.lookup(ROOT, b"g", true).unwrap();
        fs.link(g, ROOT, b"h", 5).unwrap();
        assert_eq!(fs.node(g).unwrap().nlink, 2);
        fs.remove(ROOT, b"g", false, 6).unwrap();
        assert_eq!(fs.node(g).unwrap().nlink, 1);
    }
}
