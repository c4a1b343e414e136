//! What the unit tests of the unpacker share: ZIPs built in memory with the `zip` crate (and
//! patched where a test needs a lie), and a scratch root holding `archive.zip`, `src/` and an
//! empty `dest/`, which checks that nothing appears beside them.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use zip::write::{SimpleFileOptions, ZipWriter};
use zip::{CompressionMethod, System};

use super::{Limits, Result, Summary, UnpackError, copy_tree, unpack_zip};

pub(super) type Writer = ZipWriter<Cursor<Vec<u8>>>;

pub(super) const LIMITS: Limits = Limits {
    max_bytes: 1 << 30,
    max_entries: 100_000,
};

pub(super) fn stored() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(CompressionMethod::Stored)
}

pub(super) fn with_mode(mode: u32) -> SimpleFileOptions {
    stored()
        .system(System::Unix)
        .external_attributes(mode << 16)
}

pub(super) fn zip_of(build: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    build(&mut writer);
    writer.finish().expect("test fixture").into_inner()
}

pub(super) fn add(w: &mut Writer, name: &str, data: &[u8], options: SimpleFileOptions) {
    w.start_file(name, options).expect("test fixture");
    w.write_all(data).expect("test fixture");
}

pub(super) fn files(names: &[&str]) -> Vec<u8> {
    zip_of(|w| names.iter().for_each(|name| add(w, name, b"x", stored())))
}

pub(super) fn links(links: &[(&str, &str)]) -> Vec<u8> {
    zip_of(|w| {
        links
            .iter()
            .for_each(|(l, t)| w.add_symlink(*l, *t, stored()).expect("test fixture"))
    })
}

/// Replaces `from` (same length) wherever it occurs; returns the number of hits.
pub(super) fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    let mut hits = 0;
    for i in 0..=bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    hits
}

/// Overwrites a field of entry `name` in both its local header and its central record.
pub(super) fn patch(bytes: &mut [u8], name: &[u8], local: usize, central: usize, value: &[u8]) {
    let mut hits = 0;
    for i in 0..bytes.len() - 4 {
        let (field, name_at) = match bytes[i..i + 4] {
            [0x50, 0x4b, 3, 4] => (local, 30),
            [0x50, 0x4b, 1, 2] => (central, 46),
            _ => continue,
        };
        if bytes.get(i + name_at..i + name_at + name.len()) == Some(name) {
            bytes[i + field..i + field + value.len()].copy_from_slice(value);
            hits += 1;
        }
    }
    assert_eq!(hits, 2, "patched both headers");
}

/// A root holding only `archive.zip`, `src/` and the empty `dest/`.
pub(super) struct Fixture(TempDir);

impl Fixture {
    pub(super) fn new() -> Self {
        let root = TempDir::new().expect("test fixture");
        fs::create_dir(root.path().join("dest")).expect("test fixture");
        fs::create_dir(root.path().join("src")).expect("test fixture");
        Fixture(root)
    }
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    pub(super) fn unpack(&self, bytes: &[u8], limits: Limits) -> Result<Summary> {
        fs::write(self.path("archive.zip"), bytes).expect("test fixture");
        let cancel = CancellationToken::new();
        unpack_zip(
            &self.path("archive.zip"),
            &self.path("dest"),
            &limits,
            &cancel,
        )
    }
    pub(super) fn copy(&self) -> Result<Summary> {
        let cancel = CancellationToken::new();
        copy_tree(&self.path("src"), &self.path("dest"), &LIMITS, &cancel)
    }
    pub(super) fn assert_nothing_outside(&self) {
        let names = fs::read_dir(self.0.path())
            .expect("test fixture")
            .map(|e| e.expect("test fixture").file_name());
        let mut names: Vec<_> = names.filter(|n| n != "archive.zip").collect();
        names.sort();
        assert_eq!(names, ["dest", "src"]);
    }
    pub(super) fn dest_is_empty(&self) -> bool {
        fs::read_dir(self.path("dest"))
            .expect("test fixture")
            .next()
            .is_none()
    }
}

/// Asserts the variant (by its `Debug` name) and a fragment of the message.
pub(super) fn assert_is(error: &UnpackError, variant: &str, fragment: &str) {
    let debug = format!("{error:?}");
    assert_eq!(debug.split([' ', '(']).next(), Some(variant), "{debug}");
    assert!(
        error.to_string().contains(fragment),
        "{error} lacks {fragment}"
    );
}

/// Unpacks an archive that must be refused before anything is written.
pub(super) fn refused(bytes: &[u8], limits: Limits, variant: &str, fragment: &str) {
    let fixture = Fixture::new();
    let error = fixture.unpack(bytes, limits).unwrap_err();
    assert_is(&error, variant, fragment);
    fixture.assert_nothing_outside();
    assert!(fixture.dest_is_empty(), "wrote before refusing: {error}");
}

/// Unpacks an archive that fails while being written: `dest` may be partial, nothing more.
pub(super) fn failed(bytes: &[u8], variant: &str, fragment: &str) -> Fixture {
    let fixture = Fixture::new();
    assert_is(
        &fixture.unpack(bytes, LIMITS).unwrap_err(),
        variant,
        fragment,
    );
    fixture.assert_nothing_outside();
    fixture
}

pub(super) fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("test fixture").mode() & 0o7777
}

pub(super) fn mtime_of(path: &Path) -> i64 {
    fs::symlink_metadata(path).expect("test fixture").mtime()
}
