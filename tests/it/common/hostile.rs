//! A corpus of hostile archives, generated at test time (no checked-in binaries).

use super::*;

/// The limits [`hostile_cases`] assume, as configuration lines.
pub const HOSTILE_LIMITS: &str = "max-files = 50\nmax-size = 1M\n";
pub const HOSTILE_MAX_SIZE: u64 = 1 << 20;
pub const HOSTILE_MAX_FILES: u64 = 50;

/// One hostile archive and what its refusal must say.
pub struct HostileCase {
    /// Which of the kinds it is (several cases may share one).
    pub kind: &'static str,
    /// A short unique name.
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// Every string the error must contain: the entry and the problem.
    pub expect: Vec<String>,
    /// Where an escape would write; none may exist afterwards and their parents must not change.
    pub targets: Vec<PathBuf>,
}

/// The hostile archives, for a release unpacked in `<root>/deploy/releases/<staging>` (three
/// `..` from there is `root`), with `<root>/canary` the directory escapes aim at. Limits:
/// [`HOSTILE_LIMITS`].
pub fn hostile_cases(root: &Path) -> Vec<HostileCase> {
    let canary = root.join("canary");
    let releases = root.join("deploy/releases");
    let q = |s: &str| format!("{s:?}");
    let s = |s: &str| s.to_string();
    let mut cases = Vec::new();
    let mut case = |kind, name, bytes, expect: Vec<String>, targets: Vec<PathBuf>| {
        cases.push(HostileCase {
            kind,
            name,
            bytes,
            expect,
            targets,
        })
    };
    let ok = || file("ok.txt", "fine\n", 0o644);
    let abs = |name: &str| canary.join(name).to_str().expect("utf8 path").to_string();

    // Names that leave the release.
    case(
        "dotdot",
        "dotdot-to-canary",
        zip_bytes(&[ok(), file("../../../canary/evil-dotdot", "x", 0o644)]),
        vec![
            q("../../../canary/evil-dotdot"),
            s("contains a `..` component"),
        ],
        vec![canary.join("evil-dotdot")],
    );
    case(
        "dotdot",
        "dotdot-one-level",
        zip_bytes(&[file("../evil-up1", "x", 0o644)]),
        vec![q("../evil-up1"), s("`..`")],
        vec![releases.join("evil-up1")],
    );
    case(
        "dotdot",
        "dotdot-after-a-name",
        zip_bytes(&[file("sub/../../../evil-up2", "x", 0o644)]),
        vec![q("sub/../../../evil-up2"), s("`..`")],
        vec![root.join("deploy/evil-up2")],
    );
    case(
        "absolute",
        "absolute-path",
        zip_bytes(&[ok(), file(&abs("evil-abs"), "x", 0o644)]),
        vec![q(&abs("evil-abs")), s("is absolute")],
        vec![canary.join("evil-abs")],
    );
    case(
        "windows-drive",
        "drive-slash",
        zip_bytes(&[file("C:/evil-drive", "x", 0o644)]),
        vec![q("C:/evil-drive"), s("Windows drive prefix")],
        vec![],
    );
    case(
        "windows-drive",
        "drive-backslash",
        raw_zip(&[RawEntry::stored(b"C:\\evil-drive2", b"x")]),
        vec![s("evil-drive2"), s("contains a backslash")],
        vec![],
    );
    case(
        "backslash",
        "backslash-dotdot",
        raw_zip(&[RawEntry::stored(b"..\\..\\..\\canary\\evil-bs", b"x")]),
        vec![s("evil-bs"), s("contains a backslash")],
        vec![canary.join("evil-bs")],
    );

    // Names from Windows (issue 11, bug 8): `\` separates components only in entries made on
    // MS-DOS or Windows, and every check runs after it is read as one.
    let dos = |name: &[u8]| RawEntry {
        // Host system 0 (MS-DOS), version 2.0; DOS attribute 0x20 (archive).
        made_by: 0x0014,
        external_attrs: 0x20,
        ..RawEntry::stored(name, b"x")
    };
    case(
        "dos-backslash",
        "dos-dot-then-dotdot",
        raw_zip(&[dos(b"ok.txt"), dos(b".\\..\\evil-dos1")]),
        vec![q(".\\..\\evil-dos1"), s("contains a `..` component")],
        vec![releases.join("evil-dos1")],
    );
    case(
        "dos-backslash",
        "dos-name-then-dotdot",
        raw_zip(&[dos(b"a\\..\\..\\evil-dos2")]),
        vec![q("a\\..\\..\\evil-dos2"), s("`..`")],
        vec![releases.join("evil-dos2")],
    );
    case(
        "dos-backslash",
        "dos-to-canary",
        raw_zip(&[dos(b".\\..\\..\\..\\canary\\evil-dos3")]),
        vec![q(".\\..\\..\\..\\canary\\evil-dos3"), s("`..`")],
        vec![canary.join("evil-dos3")],
    );
    case(
        "dos-backslash",
        "dos-drive-letter",
        raw_zip(&[dos(b"ok.txt"), dos(b"C:\\evil-dos4")]),
        vec![q("C:\\evil-dos4"), s("Windows drive prefix")],
        vec![],
    );
    case(
        "dos-backslash",
        "dos-unc-path",
        raw_zip(&[dos(b"\\\\server\\share\\evil-dos5")]),
        vec![q("\\\\server\\share\\evil-dos5"), s("is absolute")],
        vec![],
    );
    case(
        "dotdot",
        "dot-slash-then-dotdot",
        zip_bytes(&[ok(), file("./../evil-dos6", "x", 0o644)]),
        vec![q("./../evil-dos6"), s("contains a `..` component")],
        vec![releases.join("evil-dos6")],
    );

    // Symlinks.
    case(
        "symlink-escape-write-through",
        "relative-link-out-then-write",
        zip_bytes(&[
            link("esc", "../../../canary"),
            file("esc/evil-through", "x", 0o644),
        ]),
        vec![q("esc"), s("leaves the release")],
        vec![canary.join("evil-through")],
    );
    case(
        "symlink-escape-write-through",
        "absolute-link-then-write",
        zip_bytes(&[
            link("absl", canary.to_str().expect("utf8")),
            file("absl/evil-abs-through", "x", 0o644),
        ]),
        vec![q("absl"), s("is absolute")],
        vec![canary.join("evil-abs-through")],
    );
    case(
        "symlink-escape-write-through",
        "write-first-then-link-out",
        zip_bytes(&[
            file("late/evil-late", "x", 0o644),
            link("late", "../../../canary"),
        ]),
        vec![q("late"), s("leaves the release")],
        vec![canary.join("evil-late")],
    );
    case(
        "symlink-chain",
        "chain-through-dot",
        zip_bytes(&[
            link("s", "."),
            link("t", "s/s/.."),
            file("t/evil-chain", "x", 0o644),
        ]),
        vec![q("t"), s("`..` after a name")],
        vec![releases.join("evil-chain")],
    );
    case(
        "symlink-chain",
        "chain-of-hops",
        zip_bytes(&[
            link("l1", "l2"),
            link("l2", "l3"),
            link("l3", "../../../canary"),
            file("l1/evil-hops", "x", 0o644),
        ]),
        vec![q("l3"), s("leaves the release")],
        vec![canary.join("evil-hops")],
    );
    case(
        "symlink-chain",
        "chain-up-through-nested-link",
        zip_bytes(&[
            link("a/b/up", ".."),
            link("a/c", "b/up/../../.."),
            file("a/c/evil-nested", "x", 0o644),
        ]),
        vec![q("a/c"), s("`..` after a name")],
        vec![releases.join("evil-nested")],
    );
    case(
        "directory-replaced-by-symlink",
        "link-then-entry-below-it",
        zip_bytes(&[
            dir("real/", 0o755),
            link("d", "real"),
            file("d/evil", "x", 0o644),
        ]),
        vec![q("d/evil"), s("directory replaced by a symlink")],
        vec![],
    );
    case(
        "directory-replaced-by-symlink",
        "entry-below-then-link",
        zip_bytes(&[
            dir("real/", 0o755),
            file("d/evil", "x", 0o644),
            link("d", "real"),
        ]),
        vec![q("d/evil"), s("directory replaced by a symlink")],
        vec![],
    );
    case(
        "directory-replaced-by-symlink",
        "directory-entry-then-link",
        raw_zip(&[
            RawEntry::stored("d/", b"").mode(0o040755),
            RawEntry::stored("d", b"real").mode(0o120777),
        ]),
        vec![q("d"), s("appears more than once")],
        vec![],
    );

    // Names that collide.
    case(
        "duplicate",
        "same-name-twice",
        {
            let mut b = zip_bytes(&[file("same1", "a", 0o644), file("same2", "b", 0o644)]);
            rename_entry(&mut b, "same2", "same1");
            b
        },
        vec![q("same1"), s("appears more than once")],
        vec![],
    );
    case(
        "duplicate",
        "same-after-normalisation",
        zip_bytes(&[file("x/y", "a", 0o644), file("x//./y", "b", 0o644)]),
        vec![q("x/y"), s("appears more than once")],
        vec![],
    );
    case(
        "duplicate",
        "file-and-directory",
        zip_bytes(&[dir("fd/", 0o755), file("fd", "b", 0o644)]),
        vec![q("fd"), s("appears more than once")],
        vec![],
    );
    case(
        "case-collision",
        "ascii-case",
        zip_bytes(&[file("README", "a", 0o644), file("readme", "b", 0o644)]),
        vec![q("readme"), s("only in letter case")],
        vec![],
    );
    case(
        "case-collision",
        "directory-case",
        zip_bytes(&[file("Docs/a", "a", 0o644), file("docs/b", "b", 0o644)]),
        vec![q("docs"), s("only in letter case")],
        vec![],
    );
    case(
        "case-collision",
        "unicode-case",
        zip_bytes(&[file("caf\u{c9}", "a", 0o644), file("caf\u{e9}", "b", 0o644)]),
        vec![q("caf\u{e9}"), s("only in letter case")],
        vec![],
    );

    // Entry types.
    for (name, st_mode, what) in [
        ("char-device", 0o020644, "character device"),
        ("block-device", 0o060644, "block device"),
        ("fifo", 0o010644, "FIFO"),
        ("socket", 0o140644, "socket"),
    ] {
        let mut b = zip_bytes(&[ok(), file("node", "", 0o644)]);
        set_external_mode(&mut b, "node", st_mode);
        case(
            "device-or-fifo",
            name,
            b,
            vec![q("node"), format!("{what} entries are not allowed")],
            vec![],
        );
    }

    // Bombs and limits.
    let bomb = RawEntry::deflated("bomb.bin", &vec![0u8; 8 << 20]);
    case(
        "zip-bomb-ratio",
        "ratio-honest-header",
        raw_zip(std::slice::from_ref(&bomb)),
        vec![q("bomb.bin"), s("total size exceeds 1048576 bytes")],
        vec![],
    );
    case(
        "zip-bomb-ratio",
        "ratio-lying-header",
        raw_zip(&[RawEntry {
            uncompressed_size: 1000,
            ..bomb.clone()
        }]),
        vec![
            q("bomb.bin"),
            s("more than the 1000 bytes its header declares"),
        ],
        vec![],
    );
    let chunk = vec![7u8; 64 << 10];
    let many: Vec<RawEntry> = (0..20)
        .map(|i| RawEntry::deflated(format!("part{i:02}"), &chunk))
        .collect();
    case(
        "zip-bomb-total-size",
        "many-honest-parts",
        raw_zip(&many),
        vec![q("part16"), s("total size exceeds 1048576 bytes")],
        vec![],
    );
    case(
        "zip-bomb-total-size",
        "many-parts-lying-small",
        raw_zip(
            &many
                .iter()
                .map(|e| RawEntry {
                    uncompressed_size: 100,
                    ..e.clone()
                })
                .collect::<Vec<_>>(),
        ),
        vec![s("more than the 100 bytes its header declares")],
        vec![],
    );
    // Fifield's overlapping bomb: every central entry points at the same local data.
    let shared = RawEntry::deflated("olap00", &vec![0u8; 200 << 10]);
    // Four entries keep the declared total under max-size: the overlap itself is refused.
    let overlapping: Vec<RawEntry> = (0..4)
        .map(|i| RawEntry {
            name: format!("olap{i:02}").into_bytes(),
            local_name: Some(b"olap00".to_vec()),
            offset: Some(0),
            data: if i == 0 {
                shared.data.clone()
            } else {
                Vec::new()
            },
            ..shared.clone()
        })
        .collect();
    case(
        "zip-bomb-total-size",
        "overlapping-entries",
        raw_zip(&overlapping),
        vec![q("olap01"), s("shares bytes with entry \"olap00\"")],
        vec![],
    );
    let count = HOSTILE_MAX_FILES as usize + 10;
    let names: Vec<String> = (0..count).map(|i| format!("f{i:03}")).collect();
    case(
        "too-many-entries",
        "flat",
        zip_bytes(
            &names
                .iter()
                .map(|n| file(n, "x", 0o644))
                .collect::<Vec<_>>(),
        ),
        vec![q("f050"), s("more than 50 entries"), s("raise `max-files`")],
        vec![],
    );
    case(
        "too-many-entries",
        "implied-directories",
        zip_bytes(&[file(&format!("{}leaf", "d/".repeat(count)), "x", 0o644)]),
        vec![s("more than 50 entries")],
        vec![],
    );
    let long = "n".repeat(300);
    case(
        "name-too-long",
        "component-over-255-bytes",
        zip_bytes(&[ok(), file(&long, "x", 0o644)]),
        vec![q(&long), s("name too long for the filesystem")],
        vec![],
    );
    case(
        "name-too-long",
        "path-over-4096-bytes",
        zip_bytes(&[file(
            &format!("{}f", format!("{}/", "d".repeat(200)).repeat(25)),
            "x",
            0o644,
        )]),
        vec![s("is longer than 4096 bytes")],
        vec![],
    );

    // Names that are not text.
    case(
        "invalid-utf8",
        "utf8-flag-set",
        raw_zip(&[RawEntry {
            flags: 1 << 11,
            ..RawEntry::stored(b"evil\xff.txt", b"x")
        }]),
        vec![q("evil\u{fffd}.txt"), s("is not valid UTF-8")],
        vec![],
    );
    case(
        "invalid-utf8",
        "cp437-name",
        raw_zip(&[RawEntry::stored(b"caf\x82\xff", b"x")]),
        vec![s("is not valid UTF-8")],
        vec![],
    );
    case(
        "invalid-utf8",
        "nul-in-name",
        raw_zip(&[RawEntry::stored(b"evil\0.txt", b"x")]),
        vec![s("contains a NUL byte")],
        vec![],
    );

    // Corrupt structure.
    case(
        "crc-mismatch",
        "stored",
        raw_zip(&[RawEntry {
            crc: crc32(b"0123456789") ^ 1,
            ..RawEntry::stored("data.bin", b"0123456789")
        }]),
        vec![q("data.bin"), s("CRC-32 mismatch")],
        vec![],
    );
    case(
        "crc-mismatch",
        "deflated",
        raw_zip(&[
            RawEntry::stored("ok.txt", b"fine"),
            RawEntry {
                crc: 0xdead_beef,
                ..RawEntry::deflated("big.bin", &vec![3u8; 100_000])
            },
        ]),
        vec![q("big.bin"), s("CRC-32 mismatch")],
        vec![],
    );
    let three = zip_bytes(&[ok(), file("b.txt", "b", 0o644), file("c.txt", "c", 0o644)]);
    let (eocd, cd) = central_directory(&three);
    case(
        "truncated-central-directory",
        "cut-inside-the-directory",
        three[..cd + (eocd - cd) / 2].to_vec(),
        vec![s("not a readable ZIP archive")],
        vec![],
    );
    case(
        "truncated-central-directory",
        "end-record-kept",
        [&three[..cd + (eocd - cd) / 2], &three[eocd..]].concat(),
        vec![s("not a readable ZIP archive")],
        vec![],
    );
    case(
        "truncated-central-directory",
        "count-larger-than-directory",
        raw_zip_with(
            &[RawEntry::stored("a.txt", b"a")],
            RawEnd {
                count: Some(3),
                ..RawEnd::default()
            },
        ),
        vec![s("not a readable ZIP archive")],
        vec![],
    );

    // ZIP64 lies.
    case(
        "zip64-size-lie",
        "huge-declared-size",
        raw_zip(&[RawEntry {
            zip64: true,
            uncompressed_size: 1 << 62,
            ..RawEntry::deflated("huge.bin", b"tiny")
        }]),
        vec![q("huge.bin"), s("total size exceeds")],
        vec![],
    );
    case(
        "zip64-size-lie",
        "small-declared-size",
        raw_zip(&[RawEntry {
            zip64: true,
            uncompressed_size: 10,
            ..RawEntry::deflated("small.bin", &vec![0u8; 1 << 20])
        }]),
        vec![
            q("small.bin"),
            s("more than the 10 bytes its header declares"),
        ],
        vec![],
    );
    case(
        "zip64-size-lie",
        "compressed-size-past-the-end",
        raw_zip(&[RawEntry {
            zip64: true,
            compressed_size: 1 << 40,
            ..RawEntry::deflated("past.bin", b"some bytes")
        }]),
        vec![q("past.bin"), s("claims data past the end of the entries")],
        vec![],
    );
    case(
        "zip64-size-lie",
        "entry-count-lie",
        raw_zip_with(
            &[RawEntry::stored("a.txt", b"a")],
            RawEnd {
                zip64: true,
                count: Some(1 << 40),
                ..RawEnd::default()
            },
        ),
        vec![s("not a readable ZIP archive")],
        vec![],
    );

    // Encryption and methods.
    case(
        "encrypted",
        "zipcrypto-flag",
        raw_zip(&[RawEntry {
            flags: 1,
            ..RawEntry::stored("secret.txt", b"0123456789ab-cipher")
        }]),
        vec![q("secret.txt"), s("encrypted entries are not supported")],
        vec![],
    );
    case(
        "encrypted",
        "aes",
        raw_zip(&[RawEntry {
            flags: 1,
            method: 99,
            // AE-2, vendor "AE", AES-256, actual method Stored.
            extra: [&[0x01, 0x99, 7, 0, 2, 0][..], b"AE", &[3, 0, 0]].concat(),
            ..RawEntry::stored("aes.txt", b"0123456789abcdefghij-cipher")
        }]),
        vec![q("aes.txt"), s("encrypted")],
        vec![],
    );
    case(
        "unsupported-method",
        "lzma",
        raw_zip(&[RawEntry {
            method: 14,
            ..RawEntry::stored("packed.bin", b"whatever")
        }]),
        vec![q("packed.bin"), s("compression method"), s("not supported")],
        vec![],
    );
    case(
        "header-mismatch",
        "local-name-escapes",
        raw_zip(&[RawEntry {
            local_name: Some(b"../../../canary/evil-local".to_vec()),
            ..RawEntry::stored("innocent.txt", b"x")
        }]),
        vec![q("innocent.txt")],
        vec![canary.join("evil-local")],
    );
    cases
}
