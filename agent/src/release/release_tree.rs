//! What a release dir held when it was installed, and the check that it still does: each
//! file's sha256 and mode, each directory's mode, each link's target, recorded in
//! `.release.tree.json` once the dir is assembled and compared before the release is started
//! or gone back to (S8: the bytes that run are the bytes that were verified).
//!
//! Only what was installed is compared: files a service writes into its own dir at run time
//! (a pid file, a cache) are left alone. The archive and the agent's own `.release.*` files
//! are not part of the tree (the archive is hashed on its own).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The record's file name inside a release dir.
pub const TREE_FILE: &str = ".release.tree.json";
/// Top-level names that belong to the agent, not to the release.
const AGENT_PREFIX: &str = ".release.";
/// Mode bits recorded and compared (permissions plus setuid, setgid, sticky).
const MODE_BITS: u32 = 0o7777;

/// One installed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    /// A regular file: its digest and mode.
    File { sha256: String, mode: u32 },
    /// A directory: its mode.
    Dir { mode: u32 },
    /// A symbolic link: where it points.
    Link { target: PathBuf },
}

/// Why a release dir cannot be trusted to run.
#[derive(Debug, Error)]
pub enum TreeError {
    /// An installed entry is not what was installed.
    #[error(
        "release file {file} {what} since it was installed; it is not started. Something \
         other than the agent wrote into the release dir {dir}: find out what, then remove \
         the dir and deploy the release again"
    )]
    Changed {
        /// The release dir.
        dir: String,
        /// The entry, relative to the release dir.
        file: String,
        /// What differs.
        what: String,
    },
    /// The dir or its record cannot be read.
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

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TreeError {
    let path = path.to_path_buf();
    move |source| TreeError::Io {
        action,
        path,
        source,
    }
}

/// Records what `dir` holds now into `dir/.release.tree.json` (durably). `known`: a file
/// (relative to `dir`) and the sha256 the caller verified for exactly the bytes it holds,
/// recorded instead of hashing the file again.
pub fn record(dir: &Path, known: Option<(&Path, &str)>) -> Result<(), TreeError> {
    let mut entries = BTreeMap::new();
    walk(dir, Path::new(""), known, &mut entries)?;
    let path = dir.join(TREE_FILE);
    let json =
        serde_json::to_vec(&entries).map_err(|e| io_err("encode", &path)(io::Error::other(e)))?;
    crate::state::durable::write_atomic(&path, &json).map_err(io_err("write", &path))
}

/// Checks that every entry recorded for `dir` is still as it was installed. A dir installed
/// before trees were recorded gets its record now (from then on it is checked).
pub fn check(dir: &Path) -> Result<(), TreeError> {
    let path = dir.join(TREE_FILE);
    let json = match fs::read(&path) {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::info!(dir = %dir.display(), "release dir has no tree record; recording it now");
            return record(dir, None);
        }
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let recorded: BTreeMap<String, Entry> =
        serde_json::from_slice(&json).map_err(|e| io_err("parse", &path)(io::Error::other(e)))?;
    for (rel, want) in &recorded {
        if let Some(what) = differs(&dir.join(rel), want)? {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            return Err(TreeError::Changed {
                dir: name.into_owned(),
                file: rel.clone(),
                what,
            });
        }
    }
    Ok(())
}

/// How the entry at `p` differs from `want`, if it does.
fn differs(p: &Path, want: &Entry) -> Result<Option<String>, TreeError> {
    let got = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some("is gone".into())),
        Err(e) => return Err(io_err("inspect", p)(e)),
    };
    let mode = got.permissions().mode() & MODE_BITS;
    Ok(match want {
        Entry::File { .. } if !got.file_type().is_file() => Some("is no longer a file".into()),
        Entry::Dir { .. } if !got.is_dir() => Some("is no longer a directory".into()),
        Entry::Link { .. } if !got.file_type().is_symlink() => Some("is no longer a link".into()),
        Entry::File { mode: m, .. } | Entry::Dir { mode: m } if mode != *m => {
            Some(format!("has mode {mode:04o}, not {m:04o},"))
        }
        Entry::File { sha256, .. } => {
            let now = crate::release::fetch::sha256_file(p).map_err(io_err("hash", p))?;
            (now != *sha256).then(|| {
                format!(
                    "has changed (sha256 {}, not {})",
                    short(&now),
                    short(sha256)
                )
            })
        }
        Entry::Dir { .. } => None,
        Entry::Link { target } => {
            let now = fs::read_link(p).map_err(io_err("read the link", p))?;
            (now != *target)
                .then(|| format!("now points at {}, not {},", now.display(), target.display()))
        }
    })
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Adds the entries under `dir/rel` to `out` (paths relative to the release dir); a file
/// `known` names takes the digest given with it.
fn walk(
    dir: &Path,
    rel: &Path,
    known: Option<(&Path, &str)>,
    out: &mut BTreeMap<String, Entry>,
) -> Result<(), TreeError> {
    let here = dir.join(rel);
    for item in fs::read_dir(&here).map_err(io_err("list", &here))? {
        let item = item.map_err(io_err("list", &here))?;
        let name = item.file_name();
        if rel.as_os_str().is_empty() && name.to_string_lossy().starts_with(AGENT_PREFIX) {
            continue;
        }
        let child = rel.join(&name);
        let path = dir.join(&child);
        let meta = fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
        let mode = meta.permissions().mode() & MODE_BITS;
        let entry = if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read the link", &path))?;
            Entry::Link { target }
        } else if meta.is_dir() {
            walk(dir, &child, known, out)?;
            Entry::Dir { mode }
        } else {
            let sha256 = match known {
                Some((file, sha256)) if file == child => sha256.to_string(),
                _ => crate::release::fetch::sha256_file(&path).map_err(io_err("hash", &path))?,
            };
            Entry::File { sha256, mode }
        };
        out.insert(child.to_string_lossy().into_owned(), entry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_given_with_its_verified_digest_is_recorded_with_that_digest() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("1.0.0-abc");
        fs::create_dir_all(dir.join("bin")).expect("bin");
        fs::write(dir.join("bin/app"), b"#!/bin/sh\n").expect("app");
        let app = Path::new("bin/app");
        let good = crate::release::fetch::sha256_file(&dir.join(app)).expect("hash");
        record(&dir, Some((app, &good))).expect("record");
        check(&dir).expect("the verified digest is the file's");
        // Not hashed again: a digest that is not the file's is what gets recorded, so the
        // check before a start names the file.
        let other = "0".repeat(64);
        record(&dir, Some((app, &other))).expect("record");
        let e = check(&dir)
            .expect_err("recorded digest differs")
            .to_string();
        assert!(e.contains("bin/app has changed"), "{e}");
        assert!(e.contains("not 000000000000"), "{e}");
    }

    #[test]
    fn a_changed_file_mode_or_link_is_named_and_run_time_files_are_not() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("1.0.0-abc");
        fs::create_dir_all(dir.join("bin")).expect("bin");
        fs::write(dir.join("bin/app"), b"#!/bin/sh\n").expect("app");
        fs::write(dir.join(".release.json"), b"{}").expect("info");
        std::os::unix::fs::symlink("bin/app", dir.join("app")).expect("link");
        record(&dir, None).expect("record");
        fs::write(dir.join("healthy.pid"), b"1").expect("a file the service writes");
        fs::write(dir.join(".release.json"), b"{\"x\":1}").expect("agent's own");
        check(&dir).expect("unchanged");

        let changed = |f: &dyn Fn()| {
            f();
            let e = check(&dir).expect_err("changed").to_string();
            record(&dir, None).expect("record again");
            e
        };
        let e = changed(&|| fs::write(dir.join("bin/app"), b"#!/bin/sh\nevil\n").expect("w"));
        assert!(
            e.starts_with("release file bin/app has changed (sha256"),
            "{e}"
        );
        assert!(e.contains("release dir 1.0.0-abc"), "{e}");
        let e = changed(&|| {
            fs::set_permissions(dir.join("bin"), fs::Permissions::from_mode(0o777)).expect("m")
        });
        assert!(
            e.contains("release file bin has mode 0777, not 0755"),
            "{e}"
        );
        let e = changed(&|| {
            fs::remove_file(dir.join("app")).expect("rm");
            std::os::unix::fs::symlink("/etc/shadow", dir.join("app")).expect("link");
        });
        assert!(e.contains("app now points at /etc/shadow"), "{e}");
        let e = changed(&|| fs::remove_file(dir.join("bin/app")).expect("rm"));
        assert!(e.contains("bin/app is gone"), "{e}");
    }
}
