//! ZIP archives for the tests: built with the `zip` crate from a list of entries, then
//! patched where a test needs a header the crate will not write; and hand-made, every field
//! as the test says, lies included.

use super::*;

/// One ZIP entry.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Name, content, mode (bits above 0o777, such as setuid, are written too).
    File(String, Vec<u8>, u32),
    /// Name (with or without the trailing `/`), mode.
    Dir(String, u32),
    /// Name, target.
    Link(String, String),
}

pub fn file(name: &str, data: impl AsRef<[u8]>, mode: u32) -> Entry {
    Entry::File(name.into(), data.as_ref().to_vec(), mode)
}

pub fn dir(name: &str, mode: u32) -> Entry {
    Entry::Dir(name.into(), mode)
}

pub fn link(name: &str, target: &str) -> Entry {
    Entry::Link(name.into(), target.into())
}

/// The modification time of every entry: 2021-03-04 05:06:08.
pub fn entry_time() -> zip::DateTime {
    zip::DateTime::from_date_and_time(2021, 3, 4, 5, 6, 8).expect("valid date")
}

/// The bytes of a ZIP holding `entries`, in order.
pub fn zip_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = |mode: u32| {
        SimpleFileOptions::default()
            .unix_permissions(mode)
            .last_modified_time(entry_time())
    };
    let mut high_modes = Vec::new();
    for e in entries {
        match e {
            Entry::File(name, data, mode) => {
                w.start_file(name.as_str(), opts(*mode))
                    .expect("start_file");
                w.write_all(data).expect("write entry");
                if mode & !0o777 != 0 {
                    high_modes.push((name.clone(), *mode));
                }
            }
            Entry::Dir(name, mode) => w
                .add_directory(name.as_str(), opts(*mode))
                .expect("add_directory"),
            Entry::Link(name, target) => w
                .add_symlink(name.as_str(), target.as_str(), opts(0o777))
                .expect("add_symlink"),
        }
    }
    let mut bytes = w.finish().expect("finish zip").into_inner();
    // The zip crate keeps only the low 9 permission bits; set the rest in the central directory.
    for (name, mode) in high_modes {
        set_external_mode(&mut bytes, &name, 0o100000 | mode);
    }
    bytes
}

/// Write a ZIP of `entries` to `path` (atomically).
pub fn zip(path: &Path, entries: &[Entry]) -> Vec<u8> {
    let bytes = zip_bytes(entries);
    write_atomic(path, &bytes);
    bytes
}

/// Write a ZIP of regular files `(name, contents, mode)` to `path`.
pub fn zip_files(path: &Path, files: &[(&str, &str, u32)]) -> Vec<u8> {
    let entries: Vec<Entry> = files.iter().map(|(n, c, m)| file(n, c, *m)).collect();
    zip(path, &entries)
}

/// Walk a ZIP's central directory: (offset of each header, its name).
fn central_entries(bytes: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u32_at = |o: usize| {
        u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
    };
    let eocd = (0..=bytes.len() - 22)
        .rev()
        .find(|&o| bytes[o..o + 4] == [0x50, 0x4b, 0x05, 0x06])
        .expect("no EOCD");
    let count = u16_at(eocd + 10);
    let mut o = u32_at(eocd + 16);
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(
            bytes[o..o + 4],
            [0x50, 0x4b, 0x01, 0x02],
            "central header signature"
        );
        let (n, x, c) = (u16_at(o + 28), u16_at(o + 30), u16_at(o + 32));
        out.push((o, bytes[o + 46..o + 46 + n].to_vec()));
        o += 46 + n + x + c;
    }
    out
}

/// Set the Unix mode (`st_mode`, type bits included) of entry `name` in the central directory.
pub fn set_external_mode(bytes: &mut [u8], name: &str, st_mode: u32) {
    let (off, _) = central_entries(bytes)
        .into_iter()
        .find(|(_, n)| n == name.as_bytes())
        .unwrap_or_else(|| panic!("no entry {name} in the zip"));
    // "version made by": high byte 3 = Unix, so readers honour the external attributes.
    bytes[off + 5] = 3;
    bytes[off + 38..off + 42].copy_from_slice(&(st_mode << 16).to_le_bytes());
}

/// Rename entry `from` to `to` (same length) in both its local and central headers: the way
/// to build an archive with duplicate names, which the zip crate refuses to write.
pub fn rename_entry(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len(), "rename_entry keeps lengths");
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from.as_bytes() {
            bytes[i..i + from.len()].copy_from_slice(to.as_bytes());
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert_eq!(
        hits, 2,
        "expected {from} once in a local and once in the central header"
    );
}

// Hand-made ZIP archives: every header field as the test says, lies included

/// One entry of [`raw_zip`]. Both headers carry the same fields, except the name when
/// `local_name` is set.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: Vec<u8>,
    /// A different name for the local header (the central one is `name`).
    pub local_name: Option<Vec<u8>>,
    /// What follows the local header: the entry's bytes, already compressed for `method`.
    pub data: Vec<u8>,
    pub method: u16,
    pub flags: u16,
    pub crc: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    /// "Version made by": high byte 3 (Unix) makes readers honour `external_attrs >> 16`.
    pub made_by: u16,
    pub external_attrs: u32,
    /// Extra fields for both headers (a ZIP64 field is put first when `zip64` is set).
    pub extra: Vec<u8>,
    /// Write both sizes as 0xFFFFFFFF and the values above in a ZIP64 extra field.
    pub zip64: bool,
    /// Where the central header says the local header is (default: where it was written).
    pub offset: Option<u32>,
}

/// A CRC-32 (IEEE), as ZIP headers carry it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

impl RawEntry {
    /// A stored regular file, mode 0644, with truthful headers.
    pub fn stored(name: impl AsRef<[u8]>, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.as_ref().to_vec(),
            local_name: None,
            data: data.to_vec(),
            method: 0,
            flags: 0,
            crc: crc32(data),
            compressed_size: data.len() as u64,
            uncompressed_size: data.len() as u64,
            made_by: 0x031e,
            external_attrs: 0o100644 << 16,
            extra: Vec::new(),
            zip64: false,
            offset: None,
        }
    }

    /// A deflated regular file, mode 0644, with truthful headers.
    pub fn deflated(name: impl AsRef<[u8]>, data: &[u8]) -> RawEntry {
        let packed = deflate(data);
        RawEntry {
            method: 8,
            compressed_size: packed.len() as u64,
            data: packed,
            ..RawEntry::stored(name, data)
        }
    }

    /// Set the Unix `st_mode` (type bits included).
    pub fn mode(mut self, st_mode: u32) -> RawEntry {
        self.external_attrs = st_mode << 16;
        self
    }
}

/// The raw deflate stream of `data`, cut out of a one-entry archive the zip crate wrote.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("x", opts).expect("start_file");
    w.write_all(data).expect("deflate");
    let bytes = w.finish().expect("finish zip").into_inner();
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let (central, _) = central_entries(&bytes)[0];
    let size = u32::from_le_bytes(
        bytes[central + 20..central + 24]
            .try_into()
            .expect("4 bytes"),
    );
    let start = 30 + u16_at(26) + u16_at(28);
    bytes[start..start + size as usize].to_vec()
}

/// How [`raw_zip_with`] ends the archive.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEnd {
    /// Write a ZIP64 end-of-central-directory record and locator (the classic record then
    /// holds 0xFFFF/0xFFFFFFFF).
    pub zip64: bool,
    /// The entry count to declare instead of the real one.
    pub count: Option<u64>,
    /// The central directory size to declare instead of the real one.
    pub cd_size: Option<u64>,
}

/// A ZIP of `entries` exactly as described, with a classic end record.
pub fn raw_zip(entries: &[RawEntry]) -> Vec<u8> {
    raw_zip_with(entries, RawEnd::default())
}

/// A ZIP of `entries` exactly as described, ended as `end` says.
pub fn raw_zip_with(entries: &[RawEntry], end: RawEnd) -> Vec<u8> {
    fn u16le(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn u32le(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn u64le(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    let (mut out, mut central) = (Vec::new(), Vec::new());
    // 1980-01-01 00:00:00 in DOS form.
    let (time, date) = (0u16, 0x21u16);
    for e in entries {
        let offset = e.offset.unwrap_or(out.len() as u32);
        let mut extra = Vec::new();
        let (csize, usize_) = if e.zip64 {
            u16le(&mut extra, 0x0001);
            u16le(&mut extra, 16);
            u64le(&mut extra, e.uncompressed_size);
            u64le(&mut extra, e.compressed_size);
            (u32::MAX, u32::MAX)
        } else {
            (e.compressed_size as u32, e.uncompressed_size as u32)
        };
        extra.extend_from_slice(&e.extra);
        let needed = if e.zip64 { 45 } else { 20 };
        let local_name = e.local_name.as_ref().unwrap_or(&e.name);

        u32le(&mut out, 0x0403_4b50);
        u16le(&mut out, needed);
        u16le(&mut out, e.flags);
        u16le(&mut out, e.method);
        u16le(&mut out, time);
        u16le(&mut out, date);
        u32le(&mut out, e.crc);
        u32le(&mut out, csize);
        u32le(&mut out, usize_);
        u16le(&mut out, local_name.len() as u16);
        u16le(&mut out, extra.len() as u16);
        out.extend_from_slice(local_name);
        out.extend_from_slice(&extra);
        out.extend_from_slice(&e.data);

        u32le(&mut central, 0x0201_4b50);
        u16le(&mut central, e.made_by);
        u16le(&mut central, needed);
        u16le(&mut central, e.flags);
        u16le(&mut central, e.method);
        u16le(&mut central, time);
        u16le(&mut central, date);
        u32le(&mut central, e.crc);
        u32le(&mut central, csize);
        u32le(&mut central, usize_);
        u16le(&mut central, e.name.len() as u16);
        u16le(&mut central, extra.len() as u16);
        u16le(&mut central, 0); // comment
        u16le(&mut central, 0); // disk
        u16le(&mut central, 0); // internal attributes
        u32le(&mut central, e.external_attrs);
        u32le(&mut central, offset);
        central.extend_from_slice(&e.name);
        central.extend_from_slice(&extra);
    }
    let cd_offset = out.len() as u64;
    let count = end.count.unwrap_or(entries.len() as u64);
    let cd_size = end.cd_size.unwrap_or(central.len() as u64);
    out.extend_from_slice(&central);
    if end.zip64 {
        let record = out.len() as u64;
        u32le(&mut out, 0x0606_4b50);
        u64le(&mut out, 44);
        u16le(&mut out, 0x031e);
        u16le(&mut out, 45);
        u32le(&mut out, 0);
        u32le(&mut out, 0);
        u64le(&mut out, count);
        u64le(&mut out, count);
        u64le(&mut out, cd_size);
        u64le(&mut out, cd_offset);
        u32le(&mut out, 0x0706_4b50);
        u32le(&mut out, 0);
        u64le(&mut out, record);
        u32le(&mut out, 1);
    }
    let small = |v: u64, max: u64| if end.zip64 { max } else { v.min(max) };
    u32le(&mut out, 0x0605_4b50);
    u16le(&mut out, 0);
    u16le(&mut out, 0);
    u16le(&mut out, small(count, 0xFFFF) as u16);
    u16le(&mut out, small(count, 0xFFFF) as u16);
    u32le(&mut out, small(cd_size, 0xFFFF_FFFF) as u32);
    u32le(&mut out, small(cd_offset, 0xFFFF_FFFF) as u32);
    u16le(&mut out, 0);
    out
}

/// The offset of the end-of-central-directory record and where the central directory starts.
pub fn central_directory(bytes: &[u8]) -> (usize, usize) {
    let eocd = (0..=bytes.len() - 22)
        .rev()
        .find(|&o| bytes[o..o + 4] == [0x50, 0x4b, 0x05, 0x06])
        .expect("no EOCD");
    let start = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().expect("4 bytes"));
    (eocd, start as usize)
}
