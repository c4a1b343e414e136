//! The validation every entry meets first, before anything is written: normalising a name,
//! classifying an entry by its mode, checking a symlink target, finding duplicates and names
//! that differ only in letter case, and the `max-files`/`max-size` limits on declared sizes.
//!
//! Pure: no I/O, so hostile input is unit-tested here with byte strings. Invariant: a path the
//! planner returns is relative, `/`-separated, and has no empty, `.` or `..` component, so
//! joining it to the destination cannot leave it (symlinks aside, which `check_target` and the
//! parent checks of `Planner::finish` cover).

use std::hash::BuildHasher;
use std::time::SystemTime;

use zip::System;

use super::{Limits, Result, UnpackError};

/// The longest entry name or symlink target accepted (Linux `PATH_MAX`).
pub(super) const PATH_MAX: u64 = 4096;

// File type bits of a unix mode as stored in ZIP external attributes (the traditional values,
// independent of the platform we run on).
pub(super) const S_IFMT: u32 = 0o170_000;
pub(super) const S_IFSOCK: u32 = 0o140_000;
pub(super) const S_IFLNK: u32 = 0o120_000;
pub(super) const S_IFREG: u32 = 0o100_000;
pub(super) const S_IFBLK: u32 = 0o060_000;
pub(super) const S_IFDIR: u32 = 0o040_000;
pub(super) const S_IFCHR: u32 = 0o020_000;
pub(super) const S_IFIFO: u32 = 0o010_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Type {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    /// `index`: position in the ZIP's central directory (unused for a local tree).
    File {
        size: u64,
        index: usize,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// One validated entry of the plan.
#[derive(Debug)]
pub(super) struct Entry {
    /// Normalised: `/`-separated, no `.`/`..`/empty components, no trailing `/`.
    pub(super) path: String,
    pub(super) kind: Kind,
    /// Permission bits only (`mode & 0o777`).
    pub(super) mode: u32,
    pub(super) mtime: Option<SystemTime>,
}

/// The one validator both sources go through: `admit` each entry's name and type, `add` the
/// entry, then `finish` checks parents and adds the implied directories.
pub(super) struct Planner {
    limits: Limits,
    pub(super) entries: Vec<Entry>,
    /// Indices into `entries`, by lower-cased path: one table finds both duplicates and names
    /// that differ only in case, and holds no copy of any path (maps of paths cost 35 MB at
    /// 100,000 entries, against the 64 MB peak the issue allows).
    names: hashbrown::HashTable<usize>,
    hasher: std::hash::RandomState,
    count: u64,
    bytes: u64,
}

/// `path` lower-cased, without a copy when it already is (the common case).
fn folded(path: &str) -> std::borrow::Cow<'_, str> {
    if path
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        std::borrow::Cow::Borrowed(path)
    } else {
        std::borrow::Cow::Owned(path.to_lowercase())
    }
}

impl Planner {
    pub(super) fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, 0)
    }

    /// For about `entries` entries: no reallocation (and no transient copy) while they come.
    pub(super) fn with_capacity(limits: Limits, entries: usize) -> Self {
        Planner {
            limits,
            entries: Vec::with_capacity(entries),
            names: hashbrown::HashTable::with_capacity(entries),
            hasher: std::hash::RandomState::new(),
            count: 0,
            bytes: 0,
        }
    }

    /// The index of the entry whose lower-cased path is `key`.
    fn claimed(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        let same = |&i: &usize| folded(&self.entries[i].path) == key;
        self.names.find(hash, same).copied()
    }

    /// The index of the entry with exactly this normalised path.
    fn index_of(&self, path: &str) -> Option<usize> {
        let i = self.claimed(&folded(path))?;
        (self.entries[i].path == path).then_some(i)
    }

    /// Checks the entry count, the name and the type; returns the normalised path and the type,
    /// or `None` for a directory entry naming the release root itself (`./`, which bsdtar
    /// writes first): it creates nothing, so it is skipped and not counted. `backslash`: `\`
    /// separates components (see [`backslash_separates`]).
    pub(super) fn admit(
        &mut self,
        raw: &[u8],
        mode: Option<u32>,
        dir_flag: bool,
        backslash: bool,
    ) -> Result<Option<(String, Type)>> {
        let (path, trailing_slash) = normalize(raw, backslash)?;
        if path.is_empty() {
            return admit_root(raw, mode, dir_flag || trailing_slash).map(|()| None);
        }
        self.count_entry(&path)?;
        let kind = classify(&path, mode, dir_flag || trailing_slash)?;
        Ok(Some((path, kind)))
    }

    fn count_entry(&mut self, path: &str) -> Result<()> {
        self.count += 1;
        if self.count > self.limits.max_entries {
            let max = self.limits.max_entries;
            return Err(UnpackError::TooManyEntries {
                path: path.to_owned(),
                max,
            });
        }
        Ok(())
    }

    pub(super) fn add(&mut self, entry: Entry) -> Result<()> {
        match &entry.kind {
            Kind::File { size, .. } => {
                self.bytes = self.bytes.saturating_add(*size);
                if self.bytes > self.limits.max_bytes {
                    let max = self.limits.max_bytes;
                    return Err(UnpackError::TooLarge {
                        path: entry.path,
                        max,
                    });
                }
            }
            Kind::Symlink { target } => check_target(&entry.path, target)?,
            Kind::Dir => {}
        }
        if let Some(i) = self.claimed(&folded(&entry.path)) {
            let other = &self.entries[i].path;
            if *other == entry.path {
                return Err(UnpackError::Duplicate { path: entry.path });
            }
            let other = other.clone();
            return Err(UnpackError::CaseCollision {
                path: entry.path,
                other,
            });
        }
        let Planner {
            names,
            entries,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(folded(&entry.path).as_ref());
        let rehash = |&i: &usize| hasher.hash_one(folded(&entries[i].path).as_ref());
        names.insert_unique(hash, entries.len(), rehash);
        entries.push(entry);
        Ok(())
    }

    /// Every parent must be a directory; missing ones are added. Walking up stops at the first
    /// known parent, whose own parents are checked on its turn, so the cost stays linear.
    pub(super) fn finish(mut self) -> Result<Vec<Entry>> {
        for i in 0..self.entries.len() {
            let path = self.entries[i].path.clone();
            let mut rest = path.as_str();
            while let Some((parent, _)) = rest.rsplit_once('/') {
                rest = parent;
                if let Some(known) = self.index_of(parent) {
                    let (path, parent) = match self.entries[known].kind {
                        Kind::Dir => break,
                        _ => (path.clone(), parent.to_owned()),
                    };
                    return Err(match self.entries[known].kind {
                        Kind::Symlink { .. } => UnpackError::SymlinkParent { path, parent },
                        _ => UnpackError::FileParent { path, parent },
                    });
                }
                self.count_entry(parent)?;
                let implied = Entry {
                    path: parent.to_owned(),
                    kind: Kind::Dir,
                    mode: 0o755,
                    mtime: None,
                };
                self.add(implied)?;
            }
        }
        Ok(self.entries)
    }
}

/// The type of the entry at `path` from its unix `mode` (if any) and whether its name or DOS
/// attributes mark a directory.
pub(super) fn classify(path: &str, mode: Option<u32>, dir_flag: bool) -> Result<Type> {
    let special = |kind| {
        Err(UnpackError::SpecialFile {
            path: path.to_owned(),
            kind,
        })
    };
    match mode.map_or(0, |m| m & S_IFMT) {
        S_IFCHR => special("character device"),
        S_IFBLK => special("block device"),
        S_IFIFO => special("FIFO"),
        S_IFSOCK => special("socket"),
        S_IFLNK if dir_flag => {
            let reason = "is a symlink but ends with `/`";
            let path = path.to_owned();
            Err(UnpackError::InvalidName { path, reason })
        }
        S_IFLNK => Ok(Type::Symlink),
        S_IFDIR => Ok(Type::Dir),
        _ if dir_flag => Ok(Type::Dir),
        0 | S_IFREG => Ok(Type::File),
        _ => special("unknown file type"),
    }
}

/// The unix mode of a ZIP entry (when it has one) and whether its DOS attributes mark a
/// directory.
pub(super) fn zip_mode(system: System, attrs: u32) -> (Option<u32>, bool) {
    let mode = (system == System::Unix && attrs >> 16 != 0).then_some(attrs >> 16);
    (mode, mode.is_none() && attrs & 0x10 != 0)
}

/// Whether a ZIP entry's name uses `\` as its separator: the entry was made on MS-DOS or
/// Windows, where `\` cannot be part of a name. Host systems (the high byte of "version made
/// by"): 0 MS-DOS/FAT (what PowerShell 5.1's `Compress-Archive` and .NET write), 11 NTFS and
/// 14 VFAT as Info-ZIP and 7-Zip number them, and 10, NTFS in PKWARE's APPNOTE (the `zip`
/// crate's `WindowsNTFS`; Info-ZIP's TOPS-20). Elsewhere a `\` is a character of the name,
/// which we refuse.
pub(super) fn backslash_separates(system: System) -> bool {
    matches!(u8::from(system), 0 | 10 | 11 | 14)
}

/// The release root itself as an entry (`./`, `.`): accepted (and skipped) as a directory only.
fn admit_root(raw: &[u8], mode: Option<u32>, dir_flag: bool) -> Result<()> {
    match classify(".", mode, dir_flag) {
        Ok(Type::Dir) => Ok(()),
        _ => Err(UnpackError::InvalidName {
            path: String::from_utf8_lossy(raw).into_owned(),
            reason: "names the release root but is not a directory",
        }),
    }
}

/// Validates a raw entry name and normalises it; also reports a trailing separator (a
/// directory). With `backslash`, `\` separates components as `/` does. `.` components are
/// dropped, so any number of leading `./` is accepted (as unzip does); a name made only of them
/// (`./`) normalises to the empty path, the release root. Every check below runs on the
/// components, after separators are known: `.\..\x` is refused as `..`, `\\server\x` as
/// absolute, `.\C:\x` as a drive.
pub(super) fn normalize(raw: &[u8], backslash: bool) -> Result<(String, bool)> {
    let invalid = |reason| {
        let path = String::from_utf8_lossy(raw).into_owned();
        Err(UnpackError::InvalidName { path, reason })
    };
    if raw.contains(&0) {
        return invalid("contains a NUL byte");
    }
    let Ok(name) = std::str::from_utf8(raw) else {
        return invalid("is not valid UTF-8");
    };
    if name.is_empty() {
        return invalid("is empty");
    }
    if name.len() > PATH_MAX as usize {
        return invalid("is longer than 4096 bytes");
    }
    if !backslash && name.contains('\\') {
        return invalid(
            "contains a backslash (a separator only in entries made on MS-DOS or Windows)",
        );
    }
    let separator = |c: char| c == '/' || (backslash && c == '\\');
    if name.starts_with(separator) {
        return invalid("is absolute");
    }
    let mut parts = Vec::new();
    for part in name.split(separator) {
        match part {
            "" | "." => {}
            ".." => return invalid("contains a `..` component"),
            part => {
                if let ([drive, b':', ..], true) = (part.as_bytes(), parts.is_empty())
                    && drive.is_ascii_alphabetic()
                {
                    return invalid("starts with a Windows drive prefix");
                }
                parts.push(part);
            }
        }
    }
    Ok((parts.join("/"), name.ends_with(separator)))
}

/// A symlink at `path` may point anywhere inside the release, judged without looking at the
/// disk: after dropping `.`, only a leading run of `..` (no deeper than the link's own directory)
/// then plain names. Lexical normalisation alone is not enough: with `d -> .`, a target `d/..`
/// normalises to `.` but resolves to the release's parent.
pub(super) fn check_target(path: &str, target: &[u8]) -> Result<()> {
    let refuse = |reason| {
        let target = String::from_utf8_lossy(&target[..target.len().min(256)]).into_owned();
        Err(UnpackError::SymlinkTarget {
            path: path.to_owned(),
            target,
            reason,
        })
    };
    if target.is_empty() {
        return refuse("is empty");
    }
    if target.len() as u64 > PATH_MAX {
        return refuse("is longer than 4096 bytes");
    }
    if target.contains(&0) {
        return refuse("contains a NUL byte");
    }
    if target.starts_with(b"/") {
        return refuse("is absolute");
    }
    let depth = path.matches('/').count();
    let (mut ups, mut descended) = (0, false);
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if descended => {
                return refuse("has `..` after a name, which can escape through another symlink");
            }
            b".." => {
                ups += 1;
                if ups > depth {
                    return refuse("leaves the release");
                }
            }
            _ => descended = true,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 30,
        max_entries: 100,
    };

    /// The reason of an `InvalidName` refusal of `raw`, after checking that it names `raw`.
    fn refusal(raw: &[u8], backslash: bool) -> &'static str {
        match normalize(raw, backslash) {
            Err(UnpackError::InvalidName { path, reason }) => {
                assert_eq!(path, String::from_utf8_lossy(raw), "the entry is named");
                reason
            }
            other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    /// Admits and adds each `(name, backslash)` as a regular file, then finishes the plan.
    fn plan(names: &[(&[u8], bool)]) -> Result<Vec<Entry>> {
        let mut planner = Planner::new(LIMITS);
        for &(raw, backslash) in names {
            let Some((path, Type::File)) = planner.admit(raw, None, false, backslash)? else {
                panic!("{raw:?} is not a file");
            };
            let kind = Kind::File { size: 1, index: 0 };
            planner.add(Entry {
                path,
                kind,
                mode: 0o644,
                mtime: None,
            })?;
        }
        planner.finish()
    }

    #[test]
    fn drops_dot_components_and_any_number_of_leading_dot_slashes() {
        for (raw, path, dir) in [
            (&b"./a"[..], "a", false),
            (b"././a/./b/", "a/b", true),
            (b".//x//y", "x/y", false),
            (b"./sub/", "sub", true),
            (b"./", "", true),
            (b".", "", false),
            (b"./././", "", true),
        ] {
            assert_eq!(
                normalize(raw, false).unwrap(),
                (path.to_owned(), dir),
                "{raw:?}"
            );
        }
    }

    /// Issue 11, bug 8: bsdtar writes `./` first; it was refused as "is empty".
    #[test]
    fn the_release_roots_own_directory_entry_is_skipped_and_not_counted() {
        let mut planner = Planner::new(Limits {
            max_entries: 1,
            ..LIMITS
        });
        for (raw, mode) in [
            (&b"./"[..], None),
            (b"./", Some(S_IFDIR | 0o755)),
            (b".", Some(S_IFDIR | 0o700)),
            (b".\\", None),
        ] {
            let backslash = raw.contains(&b'\\');
            assert!(
                planner
                    .admit(raw, mode, false, backslash)
                    .unwrap()
                    .is_none()
            );
        }
        // DOS attributes saying "directory" count as a directory too.
        assert!(planner.admit(b".", None, true, true).unwrap().is_none());
        // The one entry `max-files` allows is still free.
        assert!(planner.admit(b"a", None, false, false).unwrap().is_some());
        for (raw, mode) in [(&b"."[..], None), (b"./", Some(S_IFLNK | 0o777))] {
            let error = planner.admit(raw, mode, false, false).unwrap_err();
            assert!(
                error.to_string().contains("names the release root"),
                "{error}"
            );
        }
        assert!(matches!(
            normalize(b"", false),
            Err(UnpackError::InvalidName {
                reason: "is empty",
                ..
            })
        ));
    }

    /// Issue 11, bug 8: PowerShell 5.1 and older .NET write `\` separators (host MS-DOS).
    #[test]
    fn backslash_separates_only_in_entries_made_on_dos_or_windows() {
        let windows = [System::Dos, System::WindowsNTFS, System::MVS, System::VFAT];
        assert!(windows.into_iter().all(backslash_separates));
        assert_eq!(
            [0, 10, 11, 14].map(|host| backslash_separates(System::from(host))),
            [true; 4]
        );
        let others = [
            System::Unix,
            System::OsDarwin,
            System::Macintosh,
            System::Unknown,
        ];
        assert!(!others.into_iter().any(backslash_separates));

        let dos = |raw: &[u8]| normalize(raw, true).unwrap();
        assert_eq!(dos(b"bin\\run.sh"), ("bin/run.sh".to_owned(), false));
        assert_eq!(dos(b"a\\b/c\\"), ("a/b/c".to_owned(), true));
        assert_eq!(dos(b".\\x\\.\\y"), ("x/y".to_owned(), false));
        assert_eq!(dos(b".\\"), (String::new(), true));
        // Elsewhere a backslash is part of the name, which is refused as before.
        assert!(refusal(b"bin\\run.sh", false).contains("backslash"));
        assert!(refusal(b"C:\\x", false).contains("backslash"));
    }

    #[test]
    fn hostile_names_are_refused_after_normalising() {
        let long = [b'n'; 4097];
        let cases: [(&[u8], bool, &str); 19] = [
            (b".\\..\\x", true, "`..`"),
            (b"a\\..\\..\\x", true, "`..`"),
            (b"a\\b\\..", true, "`..`"),
            (b"C:\\x", true, "drive"),
            (b".\\c:\\x", true, "drive"),
            (b"\\\\server\\share\\x", true, "absolute"),
            (b"\\x", true, "absolute"),
            (b"./../x", false, "`..`"),
            (b"./../x", true, "`..`"),
            (b"../x", false, "`..`"),
            (b"a/../../x", false, "`..`"),
            (b"/etc/passwd", false, "absolute"),
            (b"//x", false, "absolute"),
            (b"C:/x", false, "drive"),
            (b"c:evil", false, "drive"),
            (b"./C:/x", false, "drive"),
            (b"a\0b", false, "NUL"),
            (b"caf\x82\xff", true, "UTF-8"),
            (&long, false, "4096"),
        ];
        for (raw, backslash, why) in cases {
            let reason = refusal(raw, backslash);
            assert!(reason.contains(why), "{raw:?}: {reason}");
        }
        // A colon later in a name is an ordinary character on Linux.
        assert_eq!(normalize(b"a/c:x", false).unwrap().0, "a/c:x");
    }

    #[test]
    fn finds_duplicates_and_case_collisions_after_normalising() {
        let refused = |names: &[(&[u8], bool)]| plan(names).unwrap_err().to_string();
        assert!(refused(&[(b"a/b", false), (b"a\\b", true)]).contains("more than once"));
        assert!(refused(&[(b"x", false), (b"./x", false)]).contains("\"x\": appears"));
        assert!(refused(&[(b"README", false), (b"readme", false)]).contains("letter case"));
        assert!(refused(&[(b"Docs\\a", true), (b"docs/b", false)]).contains("\"Docs\""));
        assert!(refused(&[(b"f", false), (b"f/g", false)]).contains("is a file"));
        // Implied parents are added once, and count towards `max-files`.
        let entries = plan(&[(b"./d/e/f", false), (b"d\\g", true)]).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["d/e/f", "d/g", "d/e", "d"]);
    }

    #[test]
    fn classifies_by_mode_and_refuses_special_files() {
        assert_eq!(classify("f", None, false).unwrap(), Type::File);
        assert_eq!(classify("d", None, true).unwrap(), Type::Dir);
        assert_eq!(
            classify("d", Some(S_IFDIR | 0o755), false).unwrap(),
            Type::Dir
        );
        assert_eq!(
            classify("l", Some(S_IFLNK | 0o777), false).unwrap(),
            Type::Symlink
        );
        assert!(classify("l", Some(S_IFLNK | 0o777), true).is_err());
        for kind in [S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK] {
            assert!(matches!(
                classify("n", Some(kind | 0o644), false),
                Err(UnpackError::SpecialFile { .. })
            ));
        }
        // Unix modes count only in entries made on Unix; DOS attributes mark directories.
        assert_eq!(
            zip_mode(System::Unix, (S_IFREG | 0o755) << 16),
            (Some(S_IFREG | 0o755), false)
        );
        assert_eq!(zip_mode(System::Dos, 0x10), (None, true));
        assert_eq!(
            zip_mode(System::Dos, (S_IFREG | 0o755) << 16 | 0x20),
            (None, false)
        );
    }

    #[test]
    fn symlink_targets_may_only_climb_then_descend() {
        let allowed = [
            ("l", "x/y"),
            ("a/l", ".."),
            ("a/b/l", "../../x"),
            ("a/l", "./../y/./z"),
        ];
        for (link, target) in allowed {
            assert!(
                check_target(link, target.as_bytes()).is_ok(),
                "{link} -> {target}"
            );
        }
        let refused = [
            ("l", ".."),
            ("a/l", "../../x"),
            ("l", "d/.."),
            ("a/l", "b/../.."),
        ];
        for (link, target) in refused.into_iter().chain([("l", ""), ("l", "/x")]) {
            assert!(
                check_target(link, target.as_bytes()).is_err(),
                "{link} -> {target}"
            );
        }
        assert!(check_target("l", &[b'a'; 4097]).is_err());
    }
}
