//! Shared by the fuzz targets. This file: runs the agent's tarball unpacker on bytes in a
//! scratch dir and checks, independently of the unpacker's own checks, that it left nothing
//! outside the release dir. [`wire`]: the message targets' input (length-delimited protobuf
//! messages). [`agent_fixture`]: a real agent's order intake for `coordinator_message`.
//!
//! Layout of each run's scratch dir (under `$TMPDIR`; `tests/fuzz.sh` points that at a fresh
//! dir, on tmpfs when there is one):
//!
//! ```text
//! ROOT/release.tar.gz
//! ROOT/up1/up2/up3/dest      the release dir; `..` escapes up to four levels land in ROOT
//! ```

pub mod agent_fixture;
pub mod wire;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use rollgate_agent::config::UnpackLimits;
use rollgate_agent::release::unpack::{unpack, GZIP_MAGIC};

/// Limits small enough that every run is quick, large enough for many entries.
pub const LIMITS: UnpackLimits = UnpackLimits {
    max_bytes: 1 << 20,
    max_entries: 256,
};

/// Dirs between ROOT and the release dir (so an escape by `..` is still seen).
const UP: [&str; 3] = ["up1", "up2", "up3"];
const ARCHIVE: &str = "release.tar.gz";

/// A scratch dir for one run: the release dir, and where the archive goes.
pub struct Scratch {
    /// Removed on drop.
    pub root: tempfile::TempDir,
    /// `ROOT/up1/up2/up3/dest`, created empty.
    pub dest: PathBuf,
}

impl Scratch {
    /// A fresh scratch dir under `$TMPDIR`.
    pub fn new() -> Scratch {
        let root = tempfile::Builder::new()
            .prefix("unpack.")
            .tempdir()
            .expect("scratch dir under $TMPDIR");
        let mut dest = root.path().to_path_buf();
        for up in UP {
            dest.push(up);
        }
        dest.push("dest");
        fs::create_dir_all(&dest).expect("create the release dir");
        Scratch { root, dest }
    }

    /// An absolute path inside ROOT but outside the release dir: what the structured target
    /// uses for "absolute" names, so a wrongly accepted one lands where the checks see it.
    pub fn outside(&self) -> PathBuf {
        self.root.path().join("escaped")
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// Recomputes the header checksum of every entry of a raw (uncompressed) tar archive, walking
/// it as a reader would, so the fuzzer's mutations of headers are not all refused by the
/// checksum.
pub fn fix_tar_checksums(tar: &mut [u8]) {
    let mut off = 0usize;
    while let Some(block) = tar.get_mut(off..off + 512) {
        if block.iter().all(|&b| b == 0) {
            off += 512;
            continue;
        }
        let sum: u32 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        let field = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(field.as_bytes());
        let size = tar::Header::from_byte_slice(block)
            .entry_size()
            .unwrap_or(u64::MAX);
        let data = size.div_ceil(512).saturating_mul(512);
        match usize::try_from(data)
            .ok()
            .and_then(|d| off.checked_add(512)?.checked_add(d))
        {
            Some(next) => off = next,
            None => return,
        }
    }
}

/// Gzips `bytes` (stored, no compression: the point is the tar layer).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    gz.write_all(bytes).expect("gzip to memory");
    gz.finish().expect("gzip to memory")
}

/// Unpacks the `.tar.gz` bytes into a fresh scratch release dir and checks what happened.
/// Panics (a fuzzer finding) when the unpacker panics or leaves anything outside the release
/// dir, a hard link to a file outside it, or (when it succeeded) a symlink leading outside it
/// or a special file.
pub fn unpack_and_check(scratch: &Scratch, targz: &[u8]) {
    let archive = scratch.root.path().join(ARCHIVE);
    fs::write(&archive, targz).expect("write the archive");
    let result = unpack(&archive, &scratch.dest, LIMITS);
    let ok = result.is_ok();
    if let Ok(done) = &result {
        assert!(done.entries <= LIMITS.max_entries, "{done:?}");
        assert!(done.bytes <= LIMITS.max_bytes, "{done:?}");
    }

    // Nothing outside the release dir: ROOT holds exactly the archive and the path to dest.
    assert_eq!(
        fs::read(&archive).expect("the archive is still there"),
        targz,
        "the archive was changed ({result:?})"
    );
    let mut at = scratch.root.path().to_path_buf();
    let mut expect = vec![ARCHIVE.to_string(), UP[0].to_string()];
    for next in UP.iter().skip(1).chain(["dest"].iter()) {
        let mut names: Vec<String> = fs::read_dir(&at)
            .expect("list the scratch dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        expect.sort();
        assert_eq!(
            names,
            expect,
            "the unpacker wrote outside the release dir, in {} ({result:?})",
            at.display()
        );
        at.push(expect.iter().find(|n| *n != ARCHIVE).expect("one dir"));
        let meta = fs::symlink_metadata(&at).expect("stat");
        assert!(meta.is_dir(), "{} was replaced ({result:?})", at.display());
        expect = vec![next.to_string()];
    }
    let meta = fs::symlink_metadata(&scratch.dest).expect("stat dest");
    assert!(meta.is_dir(), "the release dir was replaced ({result:?})");

    // Inside: every link of every hard-linked file is inside; on success, no special files,
    // no set-id bits, no symlink leading out.
    let dest = fs::canonicalize(&scratch.dest).expect("canonical release dir");
    let mut inodes: HashMap<(u64, u64), (u64, u64, PathBuf)> = HashMap::new();
    let mut todo = vec![dest.clone()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("list the release dir") {
            let path = entry.expect("dir entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat an unpacked entry");
            let ft = meta.file_type();
            if ft.is_dir() {
                todo.push(path);
            } else if ft.is_symlink() {
                if ok {
                    if let Some(out) = symlink_escape(&dest, &path) {
                        panic!(
                            "the unpacker accepted {} -> {:?}, which leads to {} outside the \
                             release dir",
                            path.display(),
                            fs::read_link(&path).ok(),
                            out.display()
                        );
                    }
                }
            } else if ft.is_file() {
                if ok {
                    assert_eq!(meta.mode() & 0o7000, 0, "set-id bits on {}", path.display());
                }
                if meta.nlink() > 1 {
                    inodes
                        .entry((meta.dev(), meta.ino()))
                        .or_insert((meta.nlink(), 0, path.clone()))
                        .1 += 1;
                }
            } else {
                assert!(
                    !ok,
                    "the unpacker accepted the special file {} ({:?})",
                    path.display(),
                    ft.is_fifo()
                );
            }
        }
    }
    for (nlink, seen, path) in inodes.values() {
        assert_eq!(
            nlink,
            seen,
            "{} has {nlink} links but only {seen} are in the release dir: a hard link to a file \
             outside it ({result:?})",
            path.display()
        );
    }
}

/// Where the symlink at `link` leads outside `dest` (canonical), if it does: resolves its
/// target one component at a time as the kernel would, with the kernel resolving what exists
/// and `..` taken lexically past what does not (stricter than the kernel, like the unpacker).
fn symlink_escape(dest: &Path, link: &Path) -> Option<PathBuf> {
    let target = fs::read_link(link).expect("read an unpacked symlink");
    if target.is_absolute() {
        return Some(target);
    }
    let mut cur = fs::canonicalize(link.parent().expect("a link in dest has a parent"))
        .expect("the link's dir resolves");
    let mut exists = true;
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(n) => {
                cur.push(n);
                if exists {
                    match fs::symlink_metadata(&cur) {
                        Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(&cur) {
                            Ok(real) => cur = real,
                            // Dangling or a loop: that link is checked on its own, and nothing
                            // past it resolves.
                            Err(_) => return None,
                        },
                        Ok(_) => {}
                        Err(_) => exists = false,
                    }
                }
            }
            Component::RootDir | Component::Prefix(_) => return Some(target),
        }
        if !cur.starts_with(dest) {
            return Some(cur);
        }
    }
    None
}

/// Whether the bytes look like a gzip stream already (else the target gzips them).
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}
