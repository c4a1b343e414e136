//! The command line, as the SPEC lists it (clap derive). Nothing outside this module and
//! `config.rs` sees clap types: `config::Settings::resolve` turns [`Cli`] into settings.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Pull-based deployment agent: polls a remote (ZIP over HTTP(S), S3, git, local path) and,
/// when it changes, unpacks the new version into a fresh release, runs the pre-update hooks,
/// switches `${directory}/current` to it atomically, and runs the post-update hooks (rolling
/// back when one fails).
///
/// Exit status: 0 deployed or already up to date; 1 check or update failed (current
/// unchanged); 2 usage or configuration error; 3 a pre-update hook blocked the update; 4 a
/// post-update hook failed and the previous version was restored; 5 another repo-deploy holds
/// the lock of the deploy directory; 6 the new version was refused as untrusted (signed
/// releases; current unchanged).
#[derive(Debug, Parser, Default)]
#[command(name = "repo-deploy", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (`key = value` lines). A missing default file is fine; a missing
    /// file named here is an error.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Local cache/work directory [default: ${directory}/cache]
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Pre-update hooks: a non-zero exit blocks the update [default: /etc/repo-deploy/pre-update.d]
    #[arg(long = "pre-hooks", value_name = "DIR")]
    pub pre_hooks: Option<PathBuf>,

    /// Post-update hooks: a non-zero exit rolls back [default: /etc/repo-deploy/post-update.d]
    #[arg(long = "post-hooks", value_name = "DIR")]
    pub post_hooks: Option<PathBuf>,

    /// Remote repository: http(s)://…/app.zip, s3://bucket/key.zip, a git URL
    /// (…/app.git/path#branch), or a local ZIP file or directory. `{id}` is replaced by the
    /// application identity.
    #[arg(short = 'r', long, value_name = "URL")]
    pub remote: Option<String>,

    /// The live directory the application watches (a symlink to the live release)
    /// [default: ${directory}/current]
    #[arg(short = 'l', long, value_name = "DIR")]
    pub local: Option<PathBuf>,

    /// Application identity, substituted for `{id}` in the remote URL [default: the host's
    /// FQDN reversed]
    #[arg(short = 'i', long, value_name = "ID")]
    pub id: Option<String>,

    /// Deploy directory, holding releases/ [default: /var/deploy]
    #[arg(short = 'd', long, value_name = "DIR")]
    pub directory: Option<PathBuf>,

    /// When to check, as a cron expression: 5 fields, 6 with seconds first, or @hourly-style
    /// (ignored with -f, but validated) [default: "* * * * *"]
    #[arg(short = 's', long, value_name = "CRON")]
    pub schedule: Option<String>,

    /// Check once, deploy if changed, and exit
    #[arg(short = 'f', long)]
    pub fetch: bool,

    /// Debug logging
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Log format on standard error: `human` (one line per event) or `json` (one JSON object
    /// per line, for log shippers)
    #[arg(
        long = "log-format",
        value_name = "FORMAT",
        value_enum,
        default_value_t,
        env = "REPO_DEPLOY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// The command to run; `None`: run the agent itself.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How log events are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people.
    #[default]
    Human,
    /// One JSON object per line (`timestamp`, `level`, `message`, `target`, fields).
    Json,
}

/// Commands beside the agent itself (a bare invocation runs the agent).
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum Command {
    /// Validate the configuration and print the effective settings (secrets masked).
    CheckConfig,
    /// Show the live version, the last check and its result, the releases on disk, and
    /// whether a version is pinned by a rollback.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the releases on disk, newest first (`*` marks the live one).
    Releases {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Switch `current` to the previous release (or the one named by --to), running the hooks
    /// as for an update, and pin it: the version rolled back from is not redeployed until the
    /// remote offers another one. Needs the deploy lock: stop a running agent first.
    Rollback {
        /// A release name or a unique prefix of its version (see `releases`).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
    /// Publish a release: zip SOURCE (a directory, reproducibly) or take it (a ZIP), sign it,
    /// and put the signature then the ZIP at TARGET (s3://BUCKET/KEY with this configuration's
    /// S3 settings, or a local path, written atomically).
    Publish {
        /// A directory to zip, or a ready ZIP.
        source: PathBuf,
        /// s3://BUCKET/KEY or a local path.
        target: String,
        /// Sign with this minisign secret key (`minisign -G`); its password from
        /// REPO_DEPLOY_SIGN_PASSWORD or the terminal.
        #[arg(long, value_name = "SECRET_KEY")]
        sign: Option<PathBuf>,
        /// Then make every daemon of the fleet check now (fleet mode).
        #[arg(long)]
        notify: bool,
    },
    /// Fleet rollouts (needs `etcd` and `fleet`): the group's status, halts and wake-ups.
    Fleet {
        /// What to do.
        #[command(subcommand)]
        action: FleetAction,
    },
}

/// `repo-deploy fleet …`.
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum FleetAction {
    /// Every live host with its version and phase, who is updating, halted versions and hosts
    /// that are gone. Exits 1 when a version is halted or a host is gone (for monitoring).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop VERSION everywhere: no host starts it; with `on-halt = revert` the hosts on it go
    /// back. Lasts until `fleet resume`.
    Halt {
        /// The version (as `fleet status` and `DEPLOY_VERSION` show it).
        version: String,
        /// Why, for the people who read `fleet status`.
        #[arg(long, value_name = "TEXT", default_value = "halted by an operator")]
        reason: String,
    },
    /// Lift the halt of VERSION: hosts take it again at their next check.
    Resume {
        /// The halted version.
        version: String,
    },
    /// Make every daemon of the group check now (each after a random part of its `splay`).
    Notify,
    /// Stop reporting HOST as gone (a host removed for good).
    Forget {
        /// The host's name in the group.
        host: String,
    },
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn short_flags_match_the_spec() {
        let cli = Cli::try_parse_from([
            "repo-deploy",
            "-c",
            "/x.cfg",
            "-r",
            "http://h/a.zip",
            "-l",
            "/srv/live",
            "-i",
            "app",
            "-d",
            "/srv",
            "-s",
            "@hourly",
            "-f",
            "-v",
        ])
        .expect("valid flags");
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("/x.cfg")));
        assert_eq!(cli.remote.as_deref(), Some("http://h/a.zip"));
        assert_eq!(cli.id.as_deref(), Some("app"));
        assert_eq!(cli.schedule.as_deref(), Some("@hourly"));
        assert!(cli.fetch && cli.verbose);
    }

    #[test]
    fn log_format_defaults_to_human() {
        let cli = Cli::try_parse_from(["repo-deploy"]).expect("no flags");
        assert_eq!(cli.log_format, super::LogFormat::Human);
        let cli = Cli::try_parse_from(["repo-deploy", "--log-format", "json"]).expect("json");
        assert_eq!(cli.log_format, super::LogFormat::Json);
        assert!(Cli::try_parse_from(["repo-deploy", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn unknown_flag_is_a_usage_error() {
        let err = Cli::try_parse_from(["repo-deploy", "--bogus"]).expect_err("must fail");
        assert_eq!(err.exit_code(), 2);
    }
}
