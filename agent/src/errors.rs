//! Error text.

use std::io;
use std::path::{Path, PathBuf};

/// An error and its causes on one line (top-level transport errors alone say little).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Wrapping errors often repeat their cause's text; say each thing once.
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// What follows an I/O error on `path` that the operator can act on: when the disk is full
/// (ENOSPC), which filesystem and what to do; otherwise nothing.
pub(crate) fn disk_full_hint(e: &io::Error, path: &Path) -> String {
    if e.raw_os_error() != Some(nix::errno::Errno::ENOSPC as i32) {
        return String::new();
    }
    format!(
        "; the disk is full: free space on the filesystem mounted at {} (it holds {}), then \
         retry the rollout",
        mount_point(path).display(),
        path.display()
    )
}

/// The mount point of the filesystem holding `path` (or its nearest existing ancestor): the
/// highest ancestor on the same device.
pub(crate) fn mount_point(path: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let mut dev = None;
    let mut found = path.to_path_buf();
    for dir in path.ancestors() {
        let Ok(m) = std::fs::metadata(dir) else {
            continue;
        };
        match dev {
            None => dev = Some(m.dev()),
            Some(d) if d != m.dev() => break,
            Some(_) => {}
        }
        found = dir.to_path_buf();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_disk_gets_the_hint() {
        let full = io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32);
        let hint = disk_full_hint(&full, Path::new("/proc/self/nonexistent"));
        assert!(
            hint.contains("the disk is full: free space on the filesystem mounted at /proc"),
            "{hint}"
        );
        let other = io::Error::from_raw_os_error(nix::errno::Errno::EACCES as i32);
        assert_eq!(disk_full_hint(&other, Path::new("/tmp")), "");
    }
}
