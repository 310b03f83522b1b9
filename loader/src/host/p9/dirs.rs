//! Directories and the names in them: `Treaddir`, and the requests that make, link,
//! rename, read and remove names (`Tmkdir`, `Tsymlink`, `Tmknod`, `Treadlink`, `Tlink`,
//! `Trename`, `Trenameat`, `Tunlinkat`, `Tremove`).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};

use super::server::{Kind, RDATA_HDR, Server, component, guest_mode};
use super::sys::{Errno, Res, cvt, cvt_long, err, fstat, fstatat, renameat, retry};
use super::wire::{self, DirEntry, Qid, Rmessage};

/// Longest symlink target accepted from the guest (Linux `PATH_MAX` minus the NUL).
const TARGET_MAX: usize = 4095;

impl Server {
    pub(super) fn remove(&mut self, fid: u32) -> Res<Rmessage> {
        // The fid is clunked whether or not the removal works.
        let f = self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
        if self.read_only {
            return err(libc::EROFS);
        }
        let (parent, name) = self.parent(&f)?;
        let flags = if f.kind == Kind::Dir {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(Rmessage::Remove)
    }

    pub(super) fn readdir(&self, fid: u32, offset: u64, count: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        if f.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        let open = f.open.as_ref().ok_or(Errno(libc::EBADF))?;
        let dir = open.file.as_raw_fd();
        let dev = fstat(open.file.as_fd())?.st_dev;
        let max = count.min(self.msize - RDATA_HDR) as usize;
        // The offset is a cookie this server handed out: the kernel's `d_off` of the entry
        // before, which lseek on the same directory understands (0 is the start). Nonsense
        // cookies are the file system's to reject.
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        cvt_long(unsafe { libc::lseek(dir, offset as libc::off_t, libc::SEEK_SET) })?;
        let mut raw = vec![0u8; max.clamp(1024, 64 * 1024)];
        let n = retry(|| {
            // SAFETY: `raw` is valid for writes of `raw.len()` bytes.
            cvt_long(unsafe {
                libc::syscall(libc::SYS_getdents64, dir, raw.as_mut_ptr(), raw.len())
            })
        })? as usize;
        let raw = raw.get(..n).unwrap_or(&[]);
        let mut data = Vec::with_capacity(max.min(raw.len() * 2));
        let mut rest = raw;
        // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while let Some((head, _)) = rest.split_first_chunk::<19>() {
            let ino = u64::from_ne_bytes(head[0..8].try_into().unwrap_or_default());
            let off = u64::from_ne_bytes(head[8..16].try_into().unwrap_or_default());
            let reclen = usize::from(u16::from_ne_bytes([head[16], head[17]]));
            let d_type = head[18];
            let Some(record) = rest.get(..reclen).filter(|_| reclen > 19) else {
                break;
            };
            let name = record.get(19..).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if data.len() + DirEntry::encoded_len(name.len()) > max {
                break;
            }
            let qid = if f.path.is_empty() && (name == b".." || name == b".") {
                // The root's `..` is the root: don't reveal what lies above the share.
                self.qid(&fstat(self.root.as_fd())?)
            } else {
                Qid {
                    ty: match d_type {
                        libc::DT_DIR => wire::QTDIR,
                        libc::DT_LNK => wire::QTSYMLINK,
                        _ => wire::QTFILE,
                    },
                    version: 0,
                    path: self.qid_path(dev, ino),
                }
            };
            DirEntry {
                qid,
                offset: off,
                ty: d_type,
                name,
            }
            .encode(&mut data);
            rest = rest.get(reclen..).unwrap_or_default();
        }
        Ok(Rmessage::Readdir { data })
    }

    pub(super) fn mkdir(&self, dfid: u32, name: &[u8], mode: u32) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        // SAFETY: `name` is NUL-terminated and outlives the call.
        cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), guest_mode(mode, Kind::Dir)) })?;
        Ok(Rmessage::Mkdir {
            qid: self.qid(&fstatat(dir, &name)?),
        })
    }

    pub(super) fn symlink(&self, dfid: u32, name: &[u8], target: &[u8]) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        if target.len() > TARGET_MAX {
            return err(libc::ENAMETOOLONG);
        }
        // The target is stored, never resolved by this server, so it may say anything.
        let target = CString::new(target).map_err(|_| Errno(libc::EINVAL))?;
        // SAFETY: both strings are NUL-terminated and outlive the call.
        cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
        Ok(Rmessage::Symlink {
            qid: self.qid(&fstatat(dir, &name)?),
        })
    }

    pub(super) fn mknod(&self, dfid: u32, name: &[u8], mode: u32) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        let ty = mode & libc::S_IFMT;
        // Device nodes would hand the guest whatever host device they name.
        if !matches!(ty, libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK) {
            return err(libc::EPERM);
        }
        let mode = ty | guest_mode(mode, Kind::Special);
        // SAFETY: `name` is NUL-terminated and outlives the call.
        cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })?;
        Ok(Rmessage::Mknod {
            qid: self.qid(&fstatat(dir, &name)?),
        })
    }

    pub(super) fn readlink(&self, fid: u32) -> Res<Rmessage> {
        let f = self.fid(fid)?;
        if f.kind != Kind::Symlink {
            return err(libc::EINVAL);
        }
        let mut buf = vec![0u8; TARGET_MAX + 1];
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the empty path makes it
        // read the symlink the O_PATH descriptor refers to.
        let n = cvt_long(unsafe {
            libc::readlinkat(
                f.fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            ) as libc::c_long
        })? as usize;
        if n > TARGET_MAX {
            return err(libc::ENAMETOOLONG);
        }
        buf.truncate(n);
        Ok(Rmessage::Readlink { target: buf })
    }

    pub(super) fn link(&self, dfid: u32, fid: u32, name: &[u8]) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        let f = self.fid(fid)?;
        if f.kind == Kind::Dir {
            return err(libc::EPERM);
        }
        let (old_dir, old_name) = self.parent(f)?;
        // SAFETY: both names are NUL-terminated and outlive the call. Flags 0: a symlink
        // cause is linked itself, not followed.
        cvt(unsafe {
            libc::linkat(
                old_dir.as_raw_fd(),
                old_name.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                0,
            )
        })?;
        Ok(Rmessage::Link)
    }

    pub(super) fn rename(&mut self, fid: u32, dfid: u32, name: &[u8]) -> Res<Rmessage> {
        let newdir = self.dir_fid(dfid)?;
        let name = component(name)?;
        let f = self.fid(fid)?;
        let (old_dir, old_name) = self.parent(f)?;
        let from = f.path.clone();
        let to = child_path(&newdir.path, name.clone());
        renameat(old_dir.as_fd(), old_name, newdir.fd.as_fd(), &name)?;
        self.moved(&from, to);
        Ok(Rmessage::Rename)
    }

    pub(super) fn renameat(
        &mut self,
        olddirfid: u32,
        oldname: &[u8],
        newdirfid: u32,
        newname: &[u8],
    ) -> Res<Rmessage> {
        let olddir = self.dir_fid(olddirfid)?;
        let newdir = self.dir_fid(newdirfid)?;
        let oldname = component(oldname)?;
        let newname = component(newname)?;
        renameat(olddir.fd.as_fd(), &oldname, newdir.fd.as_fd(), &newname)?;
        let from = child_path(&olddir.path, oldname);
        let to = child_path(&newdir.path, newname);
        self.moved(&from, to);
        Ok(Rmessage::Renameat)
    }

    /// After a rename, every fid at or below `from` is now at or below `to`.
    fn moved(&mut self, from: &[CString], to: Vec<CString>) {
        for f in self.fids.values_mut() {
            if f.path.starts_with(from) {
                let rest = f.path.split_off(from.len());
                f.path.clone_from(&to);
                f.path.extend(rest);
            }
        }
    }

    pub(super) fn unlinkat(&self, dfid: u32, name: &[u8], flags: u32) -> Res<Rmessage> {
        let dir = self.dir_fid(dfid)?.fd.as_fd();
        let name = component(name)?;
        let flags = match flags {
            0 => 0,
            wire::AT_REMOVEDIR => libc::AT_REMOVEDIR,
            _ => return err(libc::EINVAL),
        };
        // SAFETY: `name` is NUL-terminated and outlives the call; unlinkat never follows a
        // symlink in its last component.
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(Rmessage::Unlinkat)
    }
}

fn child_path(dir: &[CString], name: CString) -> Vec<CString> {
    let mut path = dir.to_vec();
    path.push(name);
    path
}
