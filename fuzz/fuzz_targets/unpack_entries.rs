//! The tarball unpacker on well-formed archives of hostile entries: paths and link targets
//! built from a few names, `.`, `..`, reserved names and absolute paths, in every entry type.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rollgate_fuzz::{gzip, unpack_and_check, Scratch};
use tar::EntryType;

#[derive(Arbitrary, Debug)]
enum Part {
    A,
    B,
    C,
    Dot,
    DotDot,
    Empty,
    Reserved,
}

#[derive(Arbitrary, Debug)]
struct Name {
    /// Starts at ROOT/escaped (outside the release dir) instead of being relative.
    absolute: bool,
    parts: Vec<Part>,
    trailing_slash: bool,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File,
    Dir,
    Symlink,
    Link,
    Fifo,
    Char,
    Continuous,
    GlobalHeader,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    name: Name,
    kind: Kind,
    link: Name,
    len: u8,
    mode: u16,
}

fn render(name: &Name, outside: &str) -> String {
    let mut s = if name.absolute {
        format!("{outside}/")
    } else {
        String::new()
    };
    let parts: Vec<&str> = name
        .parts
        .iter()
        .take(8)
        .map(|p| match p {
            Part::A => "a",
            Part::B => "b",
            Part::C => "c",
            Part::Dot => ".",
            Part::DotDot => "..",
            Part::Empty => "",
            Part::Reserved => ".release.json",
        })
        .collect();
    s.push_str(&parts.join("/"));
    if name.trailing_slash {
        s.push('/');
    }
    s
}

/// One ustar entry with the name and link written byte for byte (the tar crate's builder
/// refuses hostile names).
fn entry(e: &Entry, outside: &str) -> Vec<u8> {
    let kind = match e.kind {
        Kind::File => EntryType::Regular,
        Kind::Dir => EntryType::Directory,
        Kind::Symlink => EntryType::Symlink,
        Kind::Link => EntryType::Link,
        Kind::Fifo => EntryType::Fifo,
        Kind::Char => EntryType::Char,
        Kind::Continuous => EntryType::Continuous,
        Kind::GlobalHeader => EntryType::XGlobalHeader,
        Kind::Other(b) => EntryType::new(b),
    };
    let data = vec![b'x'; usize::from(e.len)];
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        for (field, text) in [
            (&mut old.name, render(&e.name, outside)),
            (&mut old.linkname, render(&e.link, outside)),
        ] {
            *field = [0; 100];
            let n = text.len().min(100);
            field[..n].copy_from_slice(&text.as_bytes()[..n]);
        }
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(u32::from(e.mode) & 0o7777);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fuzz_target!(|entries: Vec<Entry>| {
    let scratch = Scratch::new();
    let outside = scratch.outside().display().to_string();
    let mut tar: Vec<u8> = entries
        .iter()
        .take(64)
        .flat_map(|e| entry(e, &outside))
        .collect();
    tar.extend_from_slice(&[0u8; 1024]);
    unpack_and_check(&scratch, &gzip(&tar));
});
