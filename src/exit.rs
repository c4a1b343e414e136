//! The SPEC's exit codes, decided in one place.
//!
//! Every failure that ends a run is turned into an [`Exit`] here and nowhere else; only
//! `main` calls `std::process::exit`.

/// How a run of repo-deploy ends (see the SPEC's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Deployed, or the live version is already the remote's.
    Ok = 0,
    /// The check or update failed; `current` is unchanged.
    Failed = 1,
    /// Usage or configuration error; nothing was touched.
    Usage = 2,
    /// A pre-update hook blocked the update; `current` is unchanged.
    Blocked = 3,
    /// A post-update hook failed and the previous version was restored.
    RolledBack = 4,
    /// Another repo-deploy holds the lock of this deploy directory.
    Locked = 5,
    /// The new version was refused as untrusted (signature missing, invalid, unknown key,
    /// older than the newest verified, expired); `current` is unchanged.
    Untrusted = 6,
}

impl Exit {
    /// Every exit status, in the order of the SPEC's table.
    pub const ALL: [Exit; 7] = [
        Exit::Ok,
        Exit::Failed,
        Exit::Usage,
        Exit::Blocked,
        Exit::RolledBack,
        Exit::Locked,
        Exit::Untrusted,
    ];

    /// The process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The exit a status code names, as another run reported it (the control socket's
    /// answer); `None` for a code the SPEC does not define.
    pub fn from_code(code: i32) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| e.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_match_the_spec_table() {
        let table = [
            (Exit::Ok, 0),
            (Exit::Failed, 1),
            (Exit::Usage, 2),
            (Exit::Blocked, 3),
            (Exit::RolledBack, 4),
            (Exit::Locked, 5),
            (Exit::Untrusted, 6),
        ];
        for (exit, code) in table {
            assert_eq!(exit.code(), code, "{exit:?}");
            assert_eq!(Exit::from_code(code), Some(exit));
        }
        assert_eq!(Exit::ALL.len(), table.len());
        assert_eq!(Exit::from_code(7), None);
    }
}
