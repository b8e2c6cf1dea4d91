//! Unpacking a tarball release (`.tar.gz`) into its release dir, refusing anything that could
//! write or point outside it.
//!
//! The archive's digest was verified before it gets here (S8), but a verified archive can
//! still be hostile or broken, so the whole release is refused when an entry:
//!
//! - has an absolute path, a `..` component, or a name the agent reserves (`.release.*`);
//! - would be written through a symlink, or under something that is not a directory;
//! - is a symlink whose target is absolute or leads outside the release dir (checked as
//!   written, and again once everything is unpacked, following links inside the tree);
//! - is a hard link to anything but a regular file unpacked before it;
//! - is a device, fifo or other special file;
//! - appears twice (except directories);
//!
//! or when the archive decompresses to more than `unpack_max_bytes`, or holds more than
//! `unpack_max_entries` entries. Ownership is never taken from the archive (everything is
//! the agent's); modes are normalized ([`file_mode`], [`dir_mode`]): setuid, setgid and
//! sticky bits dropped, nothing group- or world-writable. Every file and directory is fsynced.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;
use thiserror::Error;

use crate::config::UnpackLimits;

/// The first bytes of every gzip stream.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Most symlinks followed when checking where one leads (as the kernel's ELOOP limit).
const MAX_LINK_HOPS: u32 = 40;
/// Names in a release dir's top level that belong to the agent, not to the release.
const RESERVED_PREFIX: &str = ".release.";

/// Why a tarball release could not be unpacked. Nothing of it is kept.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// The bytes are not a gzip-compressed tar archive, or it is damaged.
    #[error("the release is not a readable .tar.gz: {0}")]
    Corrupt(String),
    /// An entry is not allowed (see the module docs).
    #[error("tarball entry {path:?} {why}; the release is refused")]
    Hostile {
        /// The entry's path as the archive names it.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The archive decompresses to more than the configured limit.
    #[error(
        "the tarball unpacks to more than {limit} bytes; the release is refused (raise \
         unpack_max_bytes in the service's config if it is really that big)"
    )]
    TooBig {
        /// `unpack_max_bytes`.
        limit: u64,
    },
    /// The archive holds more entries than the configured limit.
    #[error(
        "the tarball holds more than {limit} entries; the release is refused (raise \
         unpack_max_entries in the service's config if it really has that many files)"
    )]
    TooManyEntries {
        /// `unpack_max_entries`.
        limit: u64,
    },
    /// A local file operation failed.
    #[error("cannot {action} {}: {source}{}", path.display(), crate::errors::disk_full_hint(source, path))]
    Io {
        /// What the agent was doing.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    let path = path.to_path_buf();
    move |source| UnpackError::Io {
        action,
        path,
        source,
    }
}

fn hostile(path: &Path, why: impl Into<String>) -> UnpackError {
    UnpackError::Hostile {
        path: path.display().to_string(),
        why: why.into(),
    }
}

/// Whether the file at `path` starts with the gzip magic bytes.
pub fn is_gzip(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; 2];
    let mut f = fs::File::open(path)?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got == head.len() && head == GZIP_MAGIC)
}

/// What an unpack produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries unpacked.
    pub entries: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
}

/// A reader that fails once more than `limit` bytes have come through it, and says so in
/// `exceeded` (the tar reader wraps errors, so the flag is how the cause is told apart).
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other("decompressed size limit reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The mode an unpacked file gets from the archive's `mode`: its permission bits without
/// setuid/setgid/sticky and without group or world write (0777 -> 0755, 04644 -> 0644).
pub fn file_mode(mode: u32) -> u32 {
    mode & 0o755
}

/// The mode an unpacked directory gets: as [`file_mode`], always with the owner's rwx (the
/// agent must be able to prune it).
pub fn dir_mode(mode: u32) -> u32 {
    file_mode(mode) | 0o700
}

/// Unpacks the gzip-compressed tarball `archive` into the existing, empty dir `dest`.
pub fn unpack(archive: &Path, dest: &Path, limits: UnpackLimits) -> Result<Unpacked, UnpackError> {
    let file = fs::File::open(archive).map_err(io_err("open", archive))?;
    let exceeded = Rc::new(Cell::new(false));
    let capped = Capped {
        inner: GzDecoder::new(BufReader::new(file)),
        left: limits.max_bytes,
        exceeded: exceeded.clone(),
    };
    let read_err = |e: io::Error| {
        if exceeded.get() {
            UnpackError::TooBig {
                limit: limits.max_bytes,
            }
        } else {
            UnpackError::Corrupt(e.to_string())
        }
    };
    let mut tar = tar::Archive::new(capped);
    let mut made_dirs: Vec<(PathBuf, u32)> = vec![(dest.to_path_buf(), 0o755)];
    let mut links: Vec<PathBuf> = Vec::new();
    let mut done = Unpacked {
        entries: 0,
        bytes: 0,
    };
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let shown = entry.path().map_err(read_err)?.into_owned();
        let rel = inside_path(&shown)?;
        if rel.as_os_str().is_empty() {
            // "./": the release dir itself.
            continue;
        }
        if rel
            .components()
            .next()
            .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(RESERVED_PREFIX))
        {
            return Err(hostile(
                &shown,
                format!("uses a name the agent reserves ({RESERVED_PREFIX}*)"),
            ));
        }
        let size = entry.header().size().map_err(read_err)?;
        if size > limits.max_bytes {
            return Err(UnpackError::TooBig {
                limit: limits.max_bytes,
            });
        }
        let mode = entry.header().mode().map_err(read_err)?;
        make_parents(dest, &rel, &shown, &mut made_dirs)?;
        let to = dest.join(&rel);
        match kind {
            EntryType::Directory => match fs::symlink_metadata(&to) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(hostile(
                        &shown,
                        "is a directory where another entry put a file or link",
                    ))
                }
                Err(_) => {
                    fs::create_dir(&to).map_err(io_err("create", &to))?;
                    made_dirs.push((to, mode));
                }
            },
            EntryType::Regular | EntryType::Continuous => {
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&to)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::AlreadyExists => hostile(&shown, "appears twice"),
                        _ => io_err("create", &to)(e),
                    })?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut out).map_err(|e| {
                    if exceeded.get() {
                        UnpackError::TooBig {
                            limit: limits.max_bytes,
                        }
                    } else {
                        io_err("write", &to)(e)
                    }
                })?;
                if copied != size {
                    return Err(UnpackError::Corrupt(format!(
                        "entry {} ends after {copied} of its {size} bytes",
                        shown.display()
                    )));
                }
                out.set_permissions(fs::Permissions::from_mode(file_mode(mode)))
                    .map_err(io_err("set the mode of", &to))?;
                out.sync_all().map_err(io_err("fsync", &to))?;
                done.bytes += copied;
            }
            EntryType::Symlink => {
                let Some(target) = entry.link_name().map_err(read_err)? else {
                    return Err(hostile(&shown, "is a symlink without a target"));
                };
                let target = target.into_owned();
                check_link_target(&rel, &target).map_err(|why| {
                    hostile(&shown, format!("is a symlink to {target:?}, which {why}"))
                })?;
                std::os::unix::fs::symlink(&target, &to).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => hostile(&shown, "appears twice"),
                    _ => io_err("create the link", &to)(e),
                })?;
                links.push(rel);
            }
            EntryType::Link => {
                let Some(target) = entry.link_name().map_err(read_err)? else {
                    return Err(hostile(&shown, "is a hard link without a target"));
                };
                let target = target.into_owned();
                let target_rel = inside_path(&target).map_err(|_| {
                    hostile(
                        &shown,
                        format!("is a hard link to {target:?}, outside the release"),
                    )
                })?;
                let from = dest.join(&target_rel);
                no_links_on_the_way(dest, &target_rel).map_err(|why| {
                    hostile(&shown, format!("is a hard link to {target:?}, which {why}"))
                })?;
                match fs::symlink_metadata(&from) {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => {
                        return Err(hostile(
                            &shown,
                            format!(
                                "is a hard link to {target:?}, which is not a regular file \
                                 unpacked before it"
                            ),
                        ))
                    }
                }
                fs::hard_link(&from, &to).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => hostile(&shown, "appears twice"),
                    _ => io_err("create the hard link", &to)(e),
                })?;
            }
            other => {
                return Err(hostile(
                    &shown,
                    format!(
                        "is a {other:?} entry; a release may only hold files, directories and \
                         links"
                    ),
                ))
            }
        }
    }
    // A link that looked fine alone can still lead out through another link ("a -> b/..",
    // with "b -> ."): follow every one inside the finished tree.
    for rel in &links {
        resolve_beneath(dest, rel)
            .map_err(|why| hostile(rel, format!("is a symlink that {why}")))?;
    }
    // Directory modes last (a read-only dir would stop its own entries), never without the
    // owner's rwx (the agent must be able to prune it), and every dir fsynced.
    for (dir, mode) in made_dirs.iter().rev() {
        if dir != dest {
            fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode(*mode)))
                .map_err(io_err("set the mode of", dir))?;
        }
        crate::state::durable::fsync_dir(dir).map_err(io_err("fsync", dir))?;
    }
    Ok(done)
}

/// The entry's path relative to the release dir, with `.` components dropped; refuses
/// absolute paths and `..`.
fn inside_path(p: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(hostile(p, "has a '..' component")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(hostile(p, "is an absolute path"))
            }
        }
    }
    Ok(out)
}

/// Creates the missing parent dirs of `rel` under `dest`; refuses to go through a symlink or
/// a file.
fn make_parents(
    dest: &Path,
    rel: &Path,
    shown: &Path,
    made: &mut Vec<(PathBuf, u32)>,
) -> Result<(), UnpackError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut at = dest.to_path_buf();
    for c in parent.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(hostile(
                    shown,
                    format!(
                        "would be written through the symlink {}",
                        at.strip_prefix(dest).unwrap_or(&at).display()
                    ),
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(hostile(
                    shown,
                    format!(
                        "is under {}, which is not a directory",
                        at.strip_prefix(dest).unwrap_or(&at).display()
                    ),
                ))
            }
            Err(_) => {
                fs::create_dir(&at).map_err(io_err("create", &at))?;
                made.push((at.clone(), 0o755));
            }
        }
    }
    Ok(())
}

/// Checks, without the filesystem, that a symlink at `link` (relative to the release dir)
/// pointing at `target` stays inside it.
fn check_link_target(link: &Path, target: &Path) -> Result<(), String> {
    if target.as_os_str().is_empty() {
        return Err("is empty".into());
    }
    let mut depth: usize = link.parent().map_or(0, |p| p.components().count());
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "leads outside the release".to_string())?
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(
                    "is absolute (links must be relative and stay inside the release)".into(),
                )
            }
        }
    }
    Ok(())
}

/// Fails if a component on the way to `rel` (its parents) is a symlink.
fn no_links_on_the_way(dest: &Path, rel: &Path) -> Result<(), String> {
    let mut at = dest.to_path_buf();
    for c in rel.parent().into_iter().flat_map(Path::components) {
        at.push(c);
        if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err("is reached through a symlink".into());
        }
    }
    Ok(())
}

/// Follows `rel` inside `root` as the kernel would (symlinks included); fails if that ever
/// leaves `root`. Returns the resolved path (components that do not exist are taken as
/// they are).
pub fn resolve_beneath(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut stack: Vec<OsString> = Vec::new();
    let mut todo: VecDeque<OsString> = VecDeque::new();
    let push_all = |todo: &mut VecDeque<OsString>, p: &Path, front: bool| -> Result<(), String> {
        let mut parts = Vec::new();
        for c in p.components() {
            match c {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("leads to the absolute path {}", p.display()))
                }
                other => parts.push(other.as_os_str().to_os_string()),
            }
        }
        if front {
            for part in parts.into_iter().rev() {
                todo.push_front(part);
            }
        } else {
            todo.extend(parts);
        }
        Ok(())
    };
    push_all(&mut todo, rel, false)?;
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part == "." {
            continue;
        }
        if part == ".." {
            if stack.pop().is_none() {
                return Err("leads outside the release".into());
            }
            continue;
        }
        let here: PathBuf = stack
            .iter()
            .fold(root.to_path_buf(), |p, s| p.join(s))
            .join(&part);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err("goes through too many links (a loop?)".into());
                }
                let target = fs::read_link(&here).map_err(|e| format!("cannot be read: {e}"))?;
                push_all(&mut todo, &target, true)?;
            }
            _ => stack.push(part),
        }
    }
    Ok(stack.iter().fold(root.to_path_buf(), |p, s| p.join(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    /// One raw tar entry: a ustar header with `name` and `link` written byte for byte (so
    /// hostile names the tar crate's builder would refuse can be made), then the data.
    fn raw(name: &str, kind: EntryType, link: &str, data: &[u8], mode: u32) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn file(name: &str, data: &[u8]) -> Vec<u8> {
        raw(name, EntryType::Regular, "", data, 0o755)
    }
    fn dir(name: &str) -> Vec<u8> {
        raw(name, EntryType::Directory, "", b"", 0o755)
    }
    fn symlink(name: &str, to: &str) -> Vec<u8> {
        raw(name, EntryType::Symlink, to, b"", 0o777)
    }
    fn hardlink(name: &str, to: &str) -> Vec<u8> {
        raw(name, EntryType::Link, to, b"", 0o644)
    }

    fn targz(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut tar: Vec<u8> = entries.concat();
        tar.extend_from_slice(&[0u8; 1024]);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        gz.finish().expect("gzip")
    }

    fn limits(max_bytes: u64, max_entries: u64) -> UnpackLimits {
        UnpackLimits {
            max_bytes,
            max_entries,
        }
    }

    fn try_unpack(
        bytes: &[u8],
        lim: UnpackLimits,
    ) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let root = tempfile::tempdir().expect("tempdir");
        let archive = root.path().join("a.tar.gz");
        fs::write(&archive, bytes).expect("archive");
        let dest = root.path().join("out");
        fs::create_dir(&dest).expect("dest");
        let r = unpack(&archive, &dest, lim);
        (root, r)
    }

    #[test]
    fn a_good_tarball_unpacks_with_modes_and_inside_links() {
        let bytes = targz(&[
            dir("./"),
            dir("bin/"),
            file("bin/demo-svc", b"#!/bin/sh\necho hi\n"),
            raw("etc/demo.conf", EntryType::Regular, "", b"port=1\n", 0o4755),
            symlink("run", "bin/demo-svc"),
            symlink("etc/up", "../bin"),
            hardlink("bin/again", "bin/demo-svc"),
            raw(
                "pax_global_header",
                EntryType::XGlobalHeader,
                "",
                b"",
                0o644,
            ),
        ]);
        let (root, r) = try_unpack(&bytes, UnpackLimits::default());
        let done = r.expect("unpacks");
        assert_eq!(done.entries, 7, "{done:?}");
        let out = root.path().join("out");
        assert_eq!(
            fs::read(out.join("run")).expect("through the link"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read(out.join("bin/again")).expect("hard link"),
            b"#!/bin/sh\necho hi\n"
        );
        let mode = |p: &str| {
            fs::metadata(out.join(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin/demo-svc"), 0o755);
        assert_eq!(mode("etc/demo.conf"), 0o755, "setuid is dropped");
        assert_eq!(mode("etc"), 0o755, "a parent made for an entry");
        assert_eq!(
            resolve_beneath(&out, Path::new("etc/up/demo-svc")).expect("inside"),
            out.join("bin/demo-svc")
        );
    }

    #[test]
    fn hostile_and_oversized_tarballs_are_refused() {
        let big = vec![b'x'; 4096];
        let many: Vec<Vec<u8>> = (0..20).map(|i| file(&format!("f{i}"), b"x")).collect();
        // (name, entries, limits, what the error says)
        let cases: Vec<(&str, Vec<Vec<u8>>, UnpackLimits, &str)> = vec![
            (
                "dot-dot path",
                vec![file("../x", b"evil")],
                UnpackLimits::default(),
                "has a '..' component",
            ),
            (
                "dot-dot deeper",
                vec![file("a/../../x", b"evil")],
                UnpackLimits::default(),
                "has a '..' component",
            ),
            (
                "absolute path",
                vec![file("/etc/evil", b"evil")],
                UnpackLimits::default(),
                "is an absolute path",
            ),
            (
                "absolute symlink",
                vec![symlink("passwd", "/etc/passwd")],
                UnpackLimits::default(),
                "is absolute",
            ),
            (
                "symlink up and out",
                vec![symlink("x", "../../etc")],
                UnpackLimits::default(),
                "leads outside the release",
            ),
            (
                "symlink out from a subdir",
                vec![dir("a/"), symlink("a/x", "../../etc")],
                UnpackLimits::default(),
                "leads outside the release",
            ),
            (
                "write through an inside symlink",
                vec![dir("d/"), symlink("l", "d"), file("l/f", b"x")],
                UnpackLimits::default(),
                "would be written through the symlink l",
            ),
            (
                "escape through a chain of links",
                vec![
                    dir("deep/"),
                    symlink("deep/s", ".."),
                    symlink("x", "deep/s/.."),
                ],
                UnpackLimits::default(),
                "leads outside the release",
            ),
            (
                "hard link outside",
                vec![hardlink("h", "/etc/passwd")],
                UnpackLimits::default(),
                "outside the release",
            ),
            (
                "hard link up",
                vec![hardlink("h", "../x")],
                UnpackLimits::default(),
                "outside the release",
            ),
            (
                "hard link to nothing",
                vec![hardlink("h", "missing")],
                UnpackLimits::default(),
                "not a regular file",
            ),
            (
                "hard link to a symlink",
                vec![file("f", b"x"), symlink("s", "f"), hardlink("h", "s")],
                UnpackLimits::default(),
                "not a regular file",
            ),
            (
                "device node",
                vec![raw("dev", EntryType::Char, "", b"", 0o644)],
                UnpackLimits::default(),
                "may only hold files, directories and links",
            ),
            (
                "fifo",
                vec![raw("p", EntryType::Fifo, "", b"", 0o644)],
                UnpackLimits::default(),
                "may only hold",
            ),
            (
                "twice",
                vec![file("a", b"1"), file("a", b"2")],
                UnpackLimits::default(),
                "appears twice",
            ),
            (
                "file over a symlink",
                vec![symlink("a", "b"), file("a", b"2")],
                UnpackLimits::default(),
                "appears twice",
            ),
            (
                "reserved name",
                vec![file(".release.json", b"{}")],
                UnpackLimits::default(),
                "reserves",
            ),
            (
                "oversize file",
                vec![file("big", &big)],
                limits(2048, 100),
                "more than 2048 bytes",
            ),
            (
                "oversize archive",
                vec![file("a", &big[..1500]), file("b", &big[..1500])],
                limits(3000, 100),
                "more than 3000 bytes",
            ),
            (
                "too many entries",
                many,
                limits(1 << 20, 10),
                "more than 10 entries",
            ),
        ];
        for (name, entries, lim, want) in cases {
            let (root, r) = try_unpack(&targz(&entries), lim);
            let err = match r {
                Ok(done) => panic!("{name}: unpacked {done:?}, should be refused"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "{name}: {err:?} should say {want:?}");
            assert!(
                !root.path().join("x").exists() && !root.path().join("evil").exists(),
                "{name}"
            );
        }

        let (_root, r) = try_unpack(b"not a tarball at all", UnpackLimits::default());
        assert!(matches!(r, Err(UnpackError::Corrupt(_))), "{r:?}");
    }

    #[test]
    fn gzip_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gz = dir.path().join("a");
        fs::write(&gz, targz(&[file("x", b"1")])).expect("write");
        let bin = dir.path().join("b");
        fs::write(&bin, b"#!/bin/sh\n").expect("write");
        let short = dir.path().join("c");
        fs::write(&short, [0x1f]).expect("write");
        assert!(is_gzip(&gz).expect("read"));
        assert!(!is_gzip(&bin).expect("read"));
        assert!(!is_gzip(&short).expect("read"));
    }
}
