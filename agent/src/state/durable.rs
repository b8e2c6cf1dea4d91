//! Crash-safe file operations: write, fsync, rename, fsync the dir; link swaps by rename (S5).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name (`current` → `current.tmp`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Flushes a directory's entries (new names, renames, removals) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `bytes` so that after a crash it holds either the old or the new
/// content: write a temporary sibling, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = sibling(path, ".tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(parent_of(path))
}

/// Points the symlink `link` at `target` atomically: a new link is made at `link.tmp` and
/// renamed over `link`, so `link` always exists and names either the old or the new target.
/// Never unlink-then-create, which leaves a moment with no link at all.
pub fn replace_symlink(link: &Path, target: &Path) -> io::Result<()> {
    let tmp = sibling(link, ".tmp");
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, link)?;
    fsync_dir(parent_of(link))
}

/// Removes `path` in one step (rename it away, then delete the renamed entry), so that a crash
/// leaves it either fully present or absent. Absent already is fine.
pub fn remove_atomic(path: &Path) -> io::Result<()> {
    let gone = sibling(path, ".removed");
    match fs::rename(path, &gone) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    fsync_dir(parent_of(path))?;
    if fs::symlink_metadata(&gone).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(&gone)
    } else {
        fs::remove_file(&gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").expect("first write");
        write_atomic(&p, b"two").expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert!(!sibling(&p, ".tmp").exists());
    }

    #[test]
    fn symlink_is_replaced_by_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("current");
        replace_symlink(&link, Path::new("releases/a")).expect("first link");
        // A stale tmp link from a crash must not get in the way.
        std::os::unix::fs::symlink("junk", sibling(&link, ".tmp")).expect("stale tmp");
        replace_symlink(&link, Path::new("releases/b")).expect("second link");
        assert_eq!(fs::read_link(&link).expect("link"), Path::new("releases/b"));
        remove_atomic(&link).expect("remove");
        assert!(fs::symlink_metadata(&link).is_err());
        remove_atomic(&link).expect("removing twice is fine");
    }
}
