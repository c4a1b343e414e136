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
//! one planner and the one writer. Only the names re-exported below are public.

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

pub use tree::{check_tree, copy_tree};
pub(crate) use write::{create_file, start_writeback, umask_clears};
pub use zip::{
    EntryView, FileRecord, OpenZip, Reuse, ReuseRequest, Unpacked, unpack_open_zip, unpack_zip,
    unpack_zip_reusing, zip_entry_view,
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
    #[error("cannot open {}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{} is not a readable ZIP archive", path.display())]
    Archive { path: PathBuf, source: ZipError },
    #[error("entry {path:?}: invalid name: {reason}")]
    InvalidName { path: String, reason: &'static str },
    #[error("entry {path:?}: appears more than once")]
    Duplicate { path: String },
    // Refused rather than "last one wins": on a case-insensitive filesystem (a developer's Mac, a
    // SMB share) one would overwrite the other, so the release would depend on where it lands.
    #[error("entry {path:?}: differs from {other:?} only in letter case")]
    CaseCollision { path: String, other: String },
    #[error("entry {path:?}: directory replaced by a symlink ({parent:?} is a symlink)")]
    SymlinkParent { path: String, parent: String },
    #[error("entry {path:?}: its parent {parent:?} is a file, not a directory")]
    FileParent { path: String, parent: String },
    #[error("entry {path:?}: symlink target {target:?} {reason}")]
    SymlinkTarget {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("entry {path:?}: {kind} entries are not allowed")]
    SpecialFile { path: String, kind: &'static str },
    #[error("entry {path:?}: encrypted entries are not supported")]
    Encrypted { path: String },
    #[error(
        "entry {path:?}: compression method {method} is not supported (only Stored and Deflated)"
    )]
    UnsupportedCompression { path: String, method: String },
    #[error("entry {path:?}: more than {max} entries; raise `max-files` if this is expected")]
    TooManyEntries { path: String, max: u64 },
    #[error("entry {path:?}: total size exceeds {max} bytes; raise `max-size` if this is expected")]
    TooLarge { path: String, max: u64 },
    #[error("entry {path:?}: holds more than the {declared} bytes its header declares")]
    LargerThanDeclared { path: String, declared: u64 },
    #[error("entry {path:?}: holds {actual} bytes but its header declares {declared}")]
    SmallerThanDeclared {
        path: String,
        declared: u64,
        actual: u64,
    },
    #[error(
        "entry {path:?}: its header claims data past the end of the entries, the archive is corrupt"
    )]
    PastTheEntries { path: String },
    #[error(
        "entry {path:?}: shares bytes with entry {other:?} (an overlapping zip bomb or a corrupt archive)"
    )]
    Overlap { path: String, other: String },
    #[error("entry {path:?}: CRC-32 mismatch, the archive is corrupt")]
    CrcMismatch { path: String },
    #[error("entry {path:?}: corrupt data")]
    Corrupt { path: String, source: ZipError },
    #[error("entry {path:?}: name too long for the filesystem")]
    NameTooLong { path: String, source: io::Error },
    #[error("entry {path:?}: cannot {action}")]
    Io {
        path: String,
        action: &'static str,
        source: io::Error,
    },
    #[error("unpacking was cancelled")]
    Cancelled,
}

type Result<T, E = UnpackError> = std::result::Result<T, E>;

/// `Err(Cancelled)` once `cancel` fires: the check between steps of every phase.
fn check(cancel: &CancellationToken) -> Result<()> {
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
