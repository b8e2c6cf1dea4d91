//! One service's directory: downloads in staging, verified release dirs, the `current` link.
//!
//! ```text
//! <state_dir>/services/<svc>/
//!   staging/<sha256>.partial          download in progress (resumed from its length)
//!   releases/<version>-<sha12>/       one verified release, complete or absent
//!     <binary>                        a single-binary artifact, mode 0755
//!     .release.json                   version, sha256 and size of the artifact
//!     .release.tar.gz                 a tarball artifact, kept to hash again (S8) ...
//!     ...                             ... next to its unpacked tree (see [`crate::release::unpack`])
//!   current -> releases/<dir>         the release that runs; replaced only by rename
//!   pid                               process group of the running service (for a restarted agent)
//!   service.log                       the service's stdout and stderr, appended (0640)
//! ```
//!
//! Each release dir also holds `.release.tree.json` ([`crate::release::release_tree`]): what it held
//! once assembled, checked before the release is started or gone back to. `staging/` is
//! 0700 and downloads in it 0600: bytes not yet verified are nobody else's to read.
//!
//! Release dirs are written by two kinds of work that may overlap: an update order (run by the
//! service's task) and stage orders (run beside it). Each takes a [`ReleaseClaim`] on the
//! release's digest before it touches `staging/` or `releases/`, so two of them never write the
//! same files, and [`ServiceDir::prune`] leaves claimed files alone.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Notify;

use crate::config::{ArtifactFormat, UnpackLimits};
use crate::state::durable;

/// Name of the metadata file inside each release dir. It starts with '.', which a configured
/// binary name never does, so the two cannot collide.
const RELEASE_INFO_FILE: &str = ".release.json";
/// Suffix of a release dir being assembled; such a dir is never pointed at and is swept away.
const ASSEMBLING_SUFFIX: &str = ".assembling";
/// How many hex digits of the digest go into a release dir's name.
const DIR_DIGEST_CHARS: usize = 12;
/// A tarball release's archive inside its release dir (its presence marks the dir as one).
const ARCHIVE_FILE: &str = ".release.tar.gz";
/// `staging/`: the agent's alone.
const STAGING_MODE: u32 = 0o700;
/// `service.log`: the agent and the service's group may read it, others not.
const LOG_MODE: u32 = 0o640;

/// A disk operation on a service's directory that failed.
#[derive(Debug, Error)]
#[error("cannot {action} {}: {source}{}", path.display(), crate::errors::disk_full_hint(source, path))]
pub struct DiskError {
    /// What the agent was doing ("create", "rename", ...).
    pub action: &'static str,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The underlying error.
    pub source: io::Error,
}

fn disk(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError {
        action,
        path,
        source,
    }
}

/// Why a verified download could not become a release dir. Nothing of it is kept.
#[derive(Debug, Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The tarball is hostile, damaged or too big.
    #[error(transparent)]
    Unpack(#[from] crate::release::unpack::UnpackError),
    /// The release does not hold a runnable `binary`.
    #[error("{0}")]
    NotRunnable(String),
}

/// What a release dir holds, recorded next to the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Release version.
    pub version: String,
    /// Lowercase hex sha256 of the artifact.
    pub sha256: String,
    /// Artifact size in bytes.
    pub size: u64,
}

/// A release dir that exists on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRelease {
    /// Dir name under `releases/` (`<version>-<sha12>`).
    pub dir: String,
    /// What it holds.
    pub info: ReleaseInfo,
}

/// One service's directory under the agent's state dir. Clones share one claim registry, so
/// make one per service and clone it.
#[derive(Debug, Clone)]
pub struct ServiceDir {
    root: PathBuf,
    binary: String,
    /// What kind of artifact new releases are.
    format: ArtifactFormat,
    /// Caps on unpacking a tarball.
    limits: UnpackLimits,
    /// Digests of the releases being fetched or installed right now.
    busy: Arc<Busy>,
}

/// The digests claimed in one service's dir, and a wake-up for those waiting for one.
#[derive(Debug, Default)]
struct Busy {
    claimed: Mutex<BTreeSet<String>>,
    released: Notify,
}

impl Busy {
    /// Locks the set even if a thread panicked holding it: it is only ever inserted into or
    /// removed from, which leaves it consistent.
    fn claimed(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The exclusive right to fetch and install one release (by digest) in a service's dir. While
/// it is held, nobody else writes that release's files and pruning leaves them alone. Released
/// on drop.
#[derive(Debug)]
pub struct ReleaseClaim {
    busy: Arc<Busy>,
    sha256: String,
}

impl Drop for ReleaseClaim {
    fn drop(&mut self) {
        self.busy.claimed().remove(&self.sha256);
        self.busy.released.notify_waiters();
    }
}

impl ServiceDir {
    /// The directory of service `service` under `state_dir`; `binary` is the artifact's file
    /// name inside each release dir.
    /// Releases are single binaries; see [`ServiceDir::with_format`].
    pub fn new(state_dir: &Path, service: &str, binary: &str) -> ServiceDir {
        ServiceDir {
            root: state_dir.join("services").join(service),
            binary: binary.to_string(),
            format: ArtifactFormat::Binary,
            limits: UnpackLimits::default(),
            busy: Arc::default(),
        }
    }

    /// The same dir, installing new releases as `format` (tarballs within `limits`).
    pub fn with_format(mut self, format: ArtifactFormat, limits: UnpackLimits) -> ServiceDir {
        self.format = format;
        self.limits = limits;
        self
    }

    /// Waits until nobody else holds a claim on `sha256` in this dir, then claims it. Dropping
    /// the future while it waits claims nothing.
    pub async fn claim(&self, sha256: &str) -> ReleaseClaim {
        loop {
            // Registered before the check, so a release between the check and the wait is seen.
            let released = self.busy.released.notified();
            if self.busy.claimed().insert(sha256.to_string()) {
                return ReleaseClaim {
                    busy: self.busy.clone(),
                    sha256: sha256.to_string(),
                };
            }
            released.await;
        }
    }

    /// Creates the directory tree if it is missing, with `staging/` private and the service
    /// log not world-readable (modes fixed on a tree made by an older agent too).
    pub fn create(&self) -> Result<(), DiskError> {
        for d in [self.staging_dir(), self.releases_dir()] {
            fs::create_dir_all(&d).map_err(disk("create", &d))?;
        }
        let staging = self.staging_dir();
        fs::set_permissions(&staging, fs::Permissions::from_mode(STAGING_MODE))
            .map_err(disk("set the mode of", &staging))?;
        let log = self.log_file();
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(LOG_MODE)
            .open(&log)
            .and_then(|f| f.set_permissions(fs::Permissions::from_mode(LOG_MODE)))
            .map_err(disk("create", &log))
    }

    /// Checks that release dir `name` still holds what was installed (see
    /// [`crate::release::release_tree`]); the error names the file that changed.
    pub fn check_tree(&self, name: &str) -> Result<(), crate::release::release_tree::TreeError> {
        crate::release::release_tree::check(&self.release_path(name))
    }

    /// `<state_dir>/services/<svc>`.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Where downloads land before they are verified.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }
    /// Where verified releases live, one dir each.
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }
    /// The `current` symlink.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }
    /// The pidfile of the running service process.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("pid")
    }
    /// The service's log (stdout and stderr, appended).
    pub fn log_file(&self) -> PathBuf {
        self.root.join("service.log")
    }
    /// The download in progress for `sha256`.
    #[cfg(test)]
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.staging_dir().join(format!("{sha256}.partial"))
    }
    /// What runs, relative to a release dir (the artifact itself, or an unpacked entry).
    pub fn binary(&self) -> &str {
        &self.binary
    }

    /// The file in release dir `name` whose digest is the release's: the tarball kept next
    /// to its unpacked tree, or the single binary.
    pub fn artifact_path(&self, name: &str) -> PathBuf {
        let dir = self.release_path(name);
        let archive = dir.join(ARCHIVE_FILE);
        if fs::symlink_metadata(&archive).is_ok() {
            archive
        } else {
            dir.join(&self.binary)
        }
    }

    /// Dir name of a release: `<version>-<first 12 hex digits of sha256>`.
    pub fn release_dir_name(version: &str, sha256: &str) -> String {
        let short = sha256.get(..DIR_DIGEST_CHARS).unwrap_or(sha256);
        format!("{version}-{short}")
    }

    /// Absolute path of release dir `name`.
    pub fn release_path(&self, name: &str) -> PathBuf {
        self.releases_dir().join(name)
    }

    /// Reads what release dir `name` holds; `None` if it does not exist.
    pub fn release_info(&self, name: &str) -> Result<Option<ReleaseInfo>, DiskError> {
        let p = self.release_path(name).join(RELEASE_INFO_FILE);
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| disk("parse", &p)(io::Error::new(io::ErrorKind::InvalidData, e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(disk("read", &p)(e)),
        }
    }

    /// The release dir `current` points at, if any.
    pub fn current_dir(&self) -> Result<Option<String>, DiskError> {
        let link = self.current_link();
        match fs::read_link(&link) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(disk("read link", &link)(e)),
        }
    }

    /// The release `current` points at, with its metadata; `None` if nothing is installed
    /// (no `current` link). A link whose release has no readable metadata (missing or corrupt
    /// file, release dir gone) is an error: something is installed, and the agent cannot say
    /// what.
    pub fn current(&self) -> Result<Option<InstalledRelease>, DiskError> {
        let Some(dir) = self.current_dir()? else {
            return Ok(None);
        };
        match self.release_info(&dir)? {
            Some(info) => Ok(Some(InstalledRelease { dir, info })),
            None => {
                let path = self.release_path(&dir).join(RELEASE_INFO_FILE);
                let missing = io::Error::new(io::ErrorKind::NotFound, "no such file");
                Err(disk("read", &path)(missing))
            }
        }
    }

    /// Whether release dir `name` exists and its artifact really has digest `sha256` (the
    /// bytes are hashed again: a dir that merely claims the digest is not trusted, S8).
    pub fn holds_verified(&self, name: &str, sha256: &str) -> Result<bool, DiskError> {
        match self.release_info(name) {
            Ok(Some(info)) if info.sha256 == sha256 => {}
            Ok(_) | Err(_) => return Ok(false),
        }
        let bin = self.artifact_path(name);
        match crate::release::fetch::sha256_file(&bin) {
            Ok(got) => Ok(got == sha256),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(disk("hash", &bin)(e)),
        }
    }

    /// Turns a verified download into release dir `<version>-<sha12>` and returns its name:
    /// a single binary is moved to `binary`; a tarball is unpacked (see [`crate::release::unpack`])
    /// and kept as `.release.tar.gz`, and must hold an executable `binary`. The dir is
    /// assembled under a temporary name, fsynced, and renamed into place, so a release dir is
    /// always complete. An existing dir of that name is replaced.
    pub fn install(&self, verified: &Path, info: &ReleaseInfo) -> Result<String, InstallError> {
        let name = Self::release_dir_name(&info.version, &info.sha256);
        let releases = self.releases_dir();
        let building = releases.join(format!("{name}{ASSEMBLING_SUFFIX}"));
        if building.exists() {
            fs::remove_dir_all(&building).map_err(disk("remove", &building))?;
        }
        fs::create_dir(&building).map_err(disk("create", &building))?;
        let assembled = self.assemble(verified, info, &building);
        if assembled.is_err() {
            // A bad tarball stays bad: drop it and its half-made dir.
            let _ = fs::remove_dir_all(&building);
            let _ = fs::remove_file(verified);
        }
        assembled?;

        let dest = self.release_path(&name);
        if dest.exists() {
            // Same name but not verified (the caller checked): corrupt or foreign; replace it.
            // It cannot be `current` or the previous release, whose digests were verified.
            fs::remove_dir_all(&dest).map_err(disk("remove", &dest))?;
        }
        fs::rename(&building, &dest).map_err(disk("rename", &building))?;
        durable::fsync_dir(&releases).map_err(disk("fsync", &releases))?;
        Ok(name)
    }

    /// Fills the dir `building` from the verified download.
    fn assemble(
        &self,
        verified: &Path,
        info: &ReleaseInfo,
        building: &Path,
    ) -> Result<(), InstallError> {
        let meta = building.join(RELEASE_INFO_FILE);
        let json = serde_json::to_vec_pretty(info)
            .map_err(|e| disk("encode", &meta)(io::Error::other(e)))?;
        durable::write_atomic(&meta, &json).map_err(disk("write", &meta))?;

        let gzip = crate::release::unpack::is_gzip(verified).map_err(disk("read", verified))?;
        let tarball = match self.format {
            ArtifactFormat::Binary => false,
            ArtifactFormat::Auto => gzip,
            ArtifactFormat::TarGz if gzip => true,
            ArtifactFormat::TarGz => {
                return Err(InstallError::NotRunnable(format!(
                    "the service's releases are tarballs (format = \"tar.gz\"), but {} is \
                     not gzip-compressed; publish a .tar.gz, or set format = \"binary\"",
                    info.version
                )))
            }
        };
        if !tarball {
            let bin = building.join(&self.binary);
            if let Some(parent) = bin.parent() {
                fs::create_dir_all(parent).map_err(disk("create", parent))?;
            }
            fs::rename(verified, &bin).map_err(disk("move the download to", &bin))?;
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
                .map_err(disk("make executable", &bin))?;
            fs::File::open(&bin)
                .and_then(|f| f.sync_all())
                .map_err(disk("fsync", &bin))?;
            if let Some(parent) = bin.parent() {
                durable::fsync_dir(parent).map_err(disk("fsync", parent))?;
            }
            // The digest the fetch verified as it wrote these bytes (the file was renamed
            // here, not copied): hashing it again would read back the page cache those
            // writes just filled, and would record, not catch, a change made in between.
            let verified_digest = (Path::new(&self.binary), info.sha256.as_str());
            return record_tree(building, Some(verified_digest));
        }
        let done = crate::release::unpack::unpack(verified, building, self.limits)?;
        let runs = crate::release::unpack::resolve_beneath(building, Path::new(&self.binary))
            .map_err(|why| InstallError::NotRunnable(format!("binary {:?} {why}", self.binary)))?;
        match fs::metadata(&runs) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(m) if m.is_file() => {
                return Err(InstallError::NotRunnable(format!(
                    "the tarball of {} has {:?} but it is not executable; fix its mode in the \
                     archive",
                    info.version, self.binary
                )))
            }
            _ => {
                return Err(InstallError::NotRunnable(format!(
                    "the tarball of {} ({} entries) has no file {:?} to run; set `binary` to \
                     its path inside the archive (e.g. \"bin/demo-svc\")",
                    info.version, done.entries, self.binary
                )))
            }
        }
        let archive = building.join(ARCHIVE_FILE);
        fs::rename(verified, &archive).map_err(disk("move the download to", &archive))?;
        record_tree(building, None)
    }

    /// Points `current` at release dir `name` by renaming a new link over it (S5).
    pub fn point_current_at(&self, name: &str) -> Result<(), DiskError> {
        let link = self.current_link();
        let target = Path::new("releases").join(name);
        durable::replace_symlink(&link, &target).map_err(disk("switch", &link))
    }

    /// Removes `current` in one step (used when a first install fails: nothing to go back to).
    pub fn remove_current(&self) -> Result<(), DiskError> {
        let link = self.current_link();
        durable::remove_atomic(&link).map_err(disk("remove", &link))
    }

    /// Names of all complete release dirs on disk.
    pub fn list_releases(&self) -> Result<Vec<String>, DiskError> {
        let dir = self.releases_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(disk("list", &dir))? {
            let entry = entry.map_err(disk("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(ASSEMBLING_SUFFIX) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The complete release dirs whose artifact is in place with its recorded size. Each was
    /// digest-verified before it was renamed into place and is never written afterwards; the
    /// bytes are hashed again before any swap ([`ServiceDir::holds_verified`]). Dirs that do
    /// not read back are left out.
    pub fn installed(&self) -> Result<Vec<InstalledRelease>, DiskError> {
        let mut out = Vec::new();
        for name in self.list_releases()? {
            let Ok(Some(info)) = self.release_info(&name) else {
                continue;
            };
            let bin = self.artifact_path(&name);
            if fs::metadata(&bin).is_ok_and(|m| m.is_file() && m.len() == info.size) {
                out.push(InstalledRelease { dir: name, info });
            }
        }
        Ok(out)
    }

    /// Deletes every release dir not named in `keep`, half-assembled dirs, and leftover
    /// downloads, except those of a claimed release (a fetch or install in progress).
    /// `current` is always kept, whatever `keep` says. Returns the deleted names.
    pub fn prune(&self, keep: &[String]) -> Result<Vec<String>, DiskError> {
        // Held throughout, so no claim can start between the check and the removal.
        let claimed = self.busy.claimed();
        let in_use = |name: &str| {
            let name = name.strip_suffix(ASSEMBLING_SUFFIX).unwrap_or(name);
            claimed.iter().any(|sha| {
                let short = sha.get(..DIR_DIGEST_CHARS).unwrap_or(sha);
                name.strip_suffix(short)
                    .is_some_and(|rest| rest.ends_with('-'))
            })
        };
        let current = self.current_dir()?;
        let dir = self.releases_dir();
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).map_err(disk("list", &dir))? {
            let entry = entry.map_err(disk("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || current.as_deref() == Some(name.as_str()) || in_use(&name) {
                continue;
            }
            let p = entry.path();
            fs::remove_dir_all(&p).map_err(disk("remove", &p))?;
            removed.push(name);
        }
        let staging = self.staging_dir();
        for entry in fs::read_dir(&staging).map_err(disk("list", &staging))? {
            let entry = entry.map_err(disk("list", &staging))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let sha = name.strip_suffix(".partial").unwrap_or(&name);
            if claimed.contains(sha) {
                continue;
            }
            let p = entry.path();
            fs::remove_file(&p).map_err(disk("remove", &p))?;
        }
        removed.sort();
        Ok(removed)
    }
}

/// Records the assembled tree (and fsyncs the dir, which the record's write does).
fn record_tree(building: &Path, known: Option<(&Path, &str)>) -> Result<(), InstallError> {
    crate::release::release_tree::record(building, known).map_err(|e| match e {
        crate::release::release_tree::TreeError::Io {
            action,
            path,
            source,
        } => InstallError::Disk(DiskError {
            action,
            path,
            source,
        }),
        other => InstallError::NotRunnable(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn stage(dir: &ServiceDir, version: &str, body: &[u8]) -> String {
        let sha = hex::encode(Sha256::digest(body));
        let p = dir.partial_path(&sha);
        fs::write(&p, body).expect("write download");
        let info = ReleaseInfo {
            version: version.into(),
            sha256: sha,
            size: body.len() as u64,
        };
        dir.install(&p, &info).expect("install")
    }

    #[test]
    fn current_switches_by_rename_and_rolls_back() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = ServiceDir::new(state.path(), "demo", "demo-svc");
        dir.create().expect("create");
        assert_eq!(dir.current().expect("read"), None);

        let v1 = stage(&dir, "1.0.0", b"one");
        let v2 = stage(&dir, "2.0.0", b"two");
        assert!(
            v1.starts_with("1.0.0-") && v1.len() == "1.0.0-".len() + 12,
            "{v1}"
        );
        let bin = dir.release_path(&v2).join("demo-svc");
        let mode = fs::metadata(&bin).expect("binary").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);

        dir.point_current_at(&v1).expect("point at v1");
        let link = dir.current_link();
        let inode_before = fs::symlink_metadata(&link).expect("link").ino();
        dir.point_current_at(&v2).expect("swap to v2");
        let cur = dir.current().expect("read").expect("installed");
        assert_eq!(cur.info.version, "2.0.0");
        // A rename puts a new link in place: different inode, never a missing link.
        assert_ne!(
            fs::symlink_metadata(&link).expect("link").ino(),
            inode_before
        );
        assert!(
            dir.release_path(&v1).exists(),
            "previous release stays on disk"
        );

        dir.point_current_at(&v1).expect("roll back");
        assert_eq!(dir.current_dir().expect("read"), Some(v1.clone()));
        assert!(!durable::sibling(&link, ".tmp").exists());

        dir.remove_current().expect("remove");
        assert_eq!(dir.current().expect("read"), None);
    }

    #[test]
    fn verified_reuse_and_prune() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = ServiceDir::new(state.path(), "demo", "demo-svc");
        dir.create().expect("create");
        let names: Vec<String> = (1..=5)
            .map(|i| stage(&dir, &format!("{i}.0.0"), format!("v{i}").as_bytes()))
            .collect();
        let sha3 = hex::encode(Sha256::digest(b"v3"));
        assert!(dir.holds_verified(&names[2], &sha3).expect("check"));
        assert!(!dir.holds_verified(&names[1], &sha3).expect("check"));
        // Tampered bytes are not trusted even though the metadata claims the digest.
        fs::write(dir.release_path(&names[2]).join("demo-svc"), b"evil").expect("tamper");
        assert!(!dir.holds_verified(&names[2], &sha3).expect("check"));

        dir.point_current_at(&names[0]).expect("point");
        fs::write(dir.partial_path("abc"), b"left over").expect("partial");
        let removed = dir
            .prune(&[names[3].clone(), names[4].clone()])
            .expect("prune");
        assert_eq!(removed, vec![names[1].clone(), names[2].clone()]);
        assert_eq!(
            dir.list_releases().expect("list"),
            vec![names[0].clone(), names[3].clone(), names[4].clone()]
        );
        assert!(!dir.partial_path("abc").exists());
    }

    #[tokio::test]
    async fn a_claim_is_exclusive_and_keeps_pruning_away() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = ServiceDir::new(state.path(), "demo", "demo-svc");
        dir.create().expect("create");
        let old = stage(&dir, "1.0.0", b"old");
        let body = b"being staged";
        let sha = hex::encode(Sha256::digest(body));

        let claim = dir.claim(&sha).await;
        // The same release waits; another one does not (and is not held up).
        let clone = dir.clone();
        let (s2, s3) = (sha.clone(), sha.clone());
        let mut second = tokio::spawn(async move { clone.claim(&s2).await });
        let other = dir.claim(&"b".repeat(64)).await;
        drop(other);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "a second claim on the same digest must wait"
        );

        // What the claimed release has on disk survives a prune; everything else goes.
        fs::write(dir.partial_path(&sha), &body[..4]).expect("partial");
        let assembling = dir.releases_dir().join(format!(
            "{}{ASSEMBLING_SUFFIX}",
            ServiceDir::release_dir_name("2.0.0", &s3)
        ));
        fs::create_dir(&assembling).expect("assembling");
        fs::write(dir.partial_path(&"c".repeat(64)), b"left over").expect("other partial");
        assert_eq!(dir.prune(&[]).expect("prune"), vec![old.clone()]);
        assert!(dir.partial_path(&sha).exists());
        assert!(assembling.exists());
        assert!(!dir.partial_path(&"c".repeat(64)).exists());

        drop(claim);
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), &mut second)
            .await
            .expect("the waiting claim gets its turn")
            .expect("task");
        drop(again);
        dir.prune(&[]).expect("prune");
        assert!(!dir.partial_path(&sha).exists());
        assert!(!assembling.exists());
    }

    #[test]
    fn installed_lists_complete_releases_only() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = ServiceDir::new(state.path(), "demo", "demo-svc");
        dir.create().expect("create");
        let a = stage(&dir, "1.0.0", b"one");
        let b = stage(&dir, "2.0.0", b"two");
        fs::create_dir(
            dir.releases_dir()
                .join(format!("3.0.0-x{ASSEMBLING_SUFFIX}")),
        )
        .expect("assembling");
        // A truncated artifact is not listed as ready.
        fs::write(dir.release_path(&b).join("demo-svc"), b"tw").expect("truncate");
        let listed: Vec<(String, String)> = dir
            .installed()
            .expect("list")
            .into_iter()
            .map(|r| (r.dir, r.info.sha256))
            .collect();
        assert_eq!(listed, vec![(a, hex::encode(Sha256::digest(b"one")))]);
    }

    use std::os::unix::fs::MetadataExt;
}
