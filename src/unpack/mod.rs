//! Turning an untrusted ZIP (or a local directory tree) into a release directory.
//!
//! What unpacking guarantees, whatever the input (it comes from a web server, a bucket or a
//! shared disk):
//! - **Nothing outside the staging directory.** Every entry is validated before anything is
//!   written (`plan.rs`: names, types, duplicates, letter case, symlink targets), and writing
//!   follows an order that makes escapes impossible by construction (`write.rs`): directories
//!   (`mkdir`, never following anything), regular files in parallel
//!   (`O_CREAT|O_EXCL|O_NOFOLLOW`), symlinks only after every file exists, and directory
//!   modes/mtimes last, deepest first.
//! - **Limits hold although headers lie**: `max-files` and `max-size` are checked on the
//!   declared sizes first, then bytes are counted while writing; each file must match its
//!   declared size and CRC-32 (`zip.rs`), and the first error stops every worker.
//! - **Nothing is left on failure** — by the caller: on error the destination may be partial,
//!   and the caller deletes it. Durability is the caller's too (it `syncfs`es the release).
//!
//! `zip.rs` reads archives, `tree.rs` copies or checks directory remotes; both go through the
//! one planner and the one writer. Only the names re-exported below are seen outside: the
//! `pub` ones by the binary, the tests and the fuzz target, the `pub(crate)` ones by the crate.

use std::io;
use std::path::PathBuf;

use ::zip::result::ZipError;
use tokio_util::sync::CancellationToken;

mod plan;
mod tree;
mod write;
mod zip;

#[cfg(test)]
mod fixture;

pub(crate) use tree::{copy_tree, validate_tree};
pub(crate) use write::{create_file, start_writeback, umask_clears};
pub use zip::unpack_zip;
pub(crate) use zip::{
    EntryView, FileRecord, OpenZip, Reuse, ReuseRequest, Unpacked, unpack_open_zip, zip_entry_view,
};

/// Caps on one release, from the `max-size` and `max-files` configuration keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total uncompressed bytes of all regular files (`max-size`).
    pub max_bytes: u64,
    /// Number of entries: files, symlinks, and directories, implied parents included (`max-files`).
    pub max_entries: u64,
}

/// What a successful unpack or copy created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Regular files written.
    pub files: u64,
    /// Directories created, implied parents (`a/` for an entry `a/b`) included.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes written to regular files.
    pub bytes: u64,
    /// Regular files of `files` taken from an earlier release instead of the archive.
    pub reused: u64,
}

/// Why an archive or tree was refused. Entry paths are shown quoted, control characters escaped.
/// An underlying error is the `source`, not part of the message: callers print the chain
/// (`{:#}`), which would otherwise show it twice.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive or the directory to copy cannot be opened or read.
    #[error("cannot open {}", path.display())]
    Open {
        /// The archive or directory.
        path: PathBuf,
        /// Why it cannot be opened.
        source: io::Error,
    },
    /// The archive's central directory cannot be read as a ZIP's.
    #[error("{} is not a readable ZIP archive", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What the zip crate found wrong.
        source: ZipError,
    },
    /// An entry's name cannot become a path in the release (absolute, `..`, a NUL, too long…).
    #[error("entry {path:?}: invalid name: {reason}")]
    InvalidName {
        /// The entry's name as written (bytes that are not UTF-8 replaced).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two entries have the same path.
    #[error("entry {path:?}: appears more than once")]
    Duplicate {
        /// The repeated path.
        path: String,
    },
    /// Two entries' paths differ only in letter case.
    // Refused rather than "last one wins": on a case-insensitive filesystem (a developer's Mac, a
    // SMB share) one would overwrite the other, so the release would depend on where it lands.
    #[error("entry {path:?}: differs from {other:?} only in letter case")]
    CaseCollision {
        /// The later entry.
        path: String,
        /// The earlier entry it collides with.
        other: String,
    },
    /// An entry lies under a path that another entry makes a symlink.
    #[error("entry {path:?}: directory replaced by a symlink ({parent:?} is a symlink)")]
    SymlinkParent {
        /// The entry.
        path: String,
        /// Its ancestor that is a symlink.
        parent: String,
    },
    /// An entry lies under a path that another entry makes a regular file.
    #[error("entry {path:?}: its parent {parent:?} is a file, not a directory")]
    FileParent {
        /// The entry.
        path: String,
        /// Its ancestor that is a file.
        parent: String,
    },
    /// A symlink's target is not allowed: it leaves the release, is absolute, is too long….
    #[error("entry {path:?}: symlink target {target:?} {reason}")]
    SymlinkTarget {
        /// The symlink.
        path: String,
        /// Its target as shown: its first 256 bytes, or `<N bytes>` when too long to read.
        target: String,
        /// What is wrong with the target.
        reason: &'static str,
    },
    /// An entry is a device, FIFO, socket or other file that is neither regular, a
    /// directory nor a symlink.
    #[error("entry {path:?}: {kind} entries are not allowed")]
    SpecialFile {
        /// The entry.
        path: String,
        /// Its type, as a message shows it ("FIFO", "block device"…).
        kind: &'static str,
    },
    /// An entry is encrypted.
    #[error("entry {path:?}: encrypted entries are not supported")]
    Encrypted {
        /// The entry.
        path: String,
    },
    /// An entry is compressed by a method other than Stored or Deflated.
    #[error(
        "entry {path:?}: compression method {method} is not supported (only Stored and Deflated)"
    )]
    UnsupportedCompression {
        /// The entry.
        path: String,
        /// The method's name, or its number when the zip crate does not know it.
        method: String,
    },
    /// The archive or tree has more entries than `max-files`, implied parents included.
    #[error("entry {path:?}: more than {max} entries; raise `max-files` if this is expected")]
    TooManyEntries {
        /// The entry that went over the limit.
        path: String,
        /// The limit (`max-files`).
        max: u64,
    },
    /// The regular files hold more bytes than `max-size`, declared or as written.
    #[error("entry {path:?}: total size exceeds {max} bytes; raise `max-size` if this is expected")]
    TooLarge {
        /// The entry that went over the limit.
        path: String,
        /// The limit in bytes (`max-size`).
        max: u64,
    },
    /// An entry's data runs past the size its header declares (a tree's file grew while copied).
    #[error("entry {path:?}: holds more than the {declared} bytes its header declares")]
    LargerThanDeclared {
        /// The entry.
        path: String,
        /// The size its header declares, or a tree's file's size when it was read.
        declared: u64,
    },
    /// An entry's data ends before the size its header declares (a tree's file shrank while
    /// copied).
    #[error("entry {path:?}: holds {actual} bytes but its header declares {declared}")]
    SmallerThanDeclared {
        /// The entry.
        path: String,
        /// The size its header declares, or a tree's file's size when it was read.
        declared: u64,
        /// The bytes it actually holds.
        actual: u64,
    },
    /// An entry's header places its data past the start of the central directory.
    #[error(
        "entry {path:?}: its header claims data past the end of the entries, the archive is corrupt"
    )]
    PastTheEntries {
        /// The entry.
        path: String,
    },
    /// Two entries' data share bytes of the archive.
    #[error(
        "entry {path:?}: shares bytes with entry {other:?} (an overlapping zip bomb or a corrupt archive)"
    )]
    Overlap {
        /// The entry whose data starts later.
        path: String,
        /// The entry whose data it overlaps.
        other: String,
    },
    /// An entry's data does not match the CRC-32 its header declares.
    #[error("entry {path:?}: CRC-32 mismatch, the archive is corrupt")]
    CrcMismatch {
        /// The entry.
        path: String,
    },
    /// An entry's data cannot be read or decompressed.
    #[error("entry {path:?}: corrupt data")]
    Corrupt {
        /// The entry.
        path: String,
        /// What the zip crate (or the decompressor) reported.
        source: ZipError,
    },
    /// An entry's name is too long for the filesystem of the release (`ENAMETOOLONG`): the
    /// archive's fault, not the machine's.
    #[error("entry {path:?}: name too long for the filesystem")]
    NameTooLong {
        /// The entry.
        path: String,
        /// The error of the system call.
        source: io::Error,
    },
    /// A filesystem operation on an entry failed (a full disk, permissions…).
    #[error("entry {path:?}: cannot {action}")]
    Io {
        /// The entry.
        path: String,
        /// What was being done, as a message shows it ("create file", "set mtime"…).
        action: &'static str,
        /// The error of the operation.
        source: io::Error,
    },
    /// The caller's cancellation token fired (the agent is stopping).
    #[error("unpacking was cancelled")]
    Cancelled,
}

type Result<T, E = UnpackError> = std::result::Result<T, E>;

/// `Err(Cancelled)` once `cancel` fires: tested between the steps of every phase.
fn stop_if_cancelled(cancel: &CancellationToken) -> Result<()> {
    match cancel.is_cancelled() {
        true => Err(UnpackError::Cancelled),
        false => Ok(()),
    }
}

/// An I/O failure on the entry at `path`; a name the filesystem finds too long gets its own
/// variant, since the archive, not the machine, is at fault.
fn io_error(path: &str, action: &'static str, source: io::Error) -> UnpackError {
    let path = path.to_owned();
    if source.raw_os_error() == Some(libc::ENAMETOOLONG) {
        UnpackError::NameTooLong { path, source }
    } else {
        UnpackError::Io {
            path,
            action,
            source,
        }
    }
}
