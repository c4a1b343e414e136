//! Generates the packaging assets that come from the CLI definition, so they can never drift
//! from `--help`: the man pages (clap_mangen) and the bash, zsh and fish completions
//! (clap_complete).
//!
//! ```text
//! cargo run --example gen-assets [-- OUT_DIR]
//! ```
//!
//! `OUT_DIR` defaults to `target/assets` in the package directory, where the assets of
//! `[package.metadata.deb]` point; `contrib/deb/build-package.sh` runs this, then `cargo deb`.
//! An example rather than a build script or a hidden subcommand: the generators stay
//! dev-dependencies (nothing extra in the shipped binary, nothing extra on every build), and
//! `cargo test` already compiles it, so the packaging step costs no extra compile.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;

use repo_deploy::cli::Cli;

fn main() -> io::Result<()> {
    let out = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/assets"),
        PathBuf::from,
    );
    let man_dir = out.join("man");
    let completions_dir = out.join("completions");
    // Start clean, so a subcommand that was removed leaves no stale page behind.
    for dir in [&man_dir, &completions_dir] {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir_all(dir)?;
    }

    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    write_main_page(&cmd, &man_dir)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_subcommand_pages(sub.clone(), &man_dir)?;
    }

    let name = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions_dir)?;
    }
    println!("{}", out.display());
    Ok(())
}

/// `repo-deploy.1`: clap's sections, plus the ones an operator looks for in a daemon's page.
fn write_main_page(cmd: &Command, dir: &Path) -> io::Result<()> {
    let man = Man::new(cmd.clone()).manual("repo-deploy manual");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    page.write_all(EXTRA_SECTIONS.as_bytes())?;
    man.render_version_section(&mut page)?;
    fs::write(dir.join(man.get_filename()), page)
}

/// One page per subcommand (`repo-deploy-check-config.1`, …), recursively.
fn write_subcommand_pages(cmd: Command, dir: &Path) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_subcommand_pages(sub.clone(), dir)?;
    }
    Man::new(cmd)
        .manual("repo-deploy manual")
        .generate_to(dir)
        .map(drop)
}

/// FILES, ENVIRONMENT, SIGNALS and SEE ALSO, in roff. The README has the full story.
const EXTRA_SECTIONS: &str = r#".SH FILES
.TP
\fI/etc/repo\-deploy/repo\-deploy.cfg\fR
The configuration file: \fBkey = value\fR lines; every key is listed there, commented out,
with its default.
.TP
\fI/etc/repo\-deploy/pre\-update.d/\fR
Pre\-update hooks: executable files run in byte\-wise order of name before the switch; a
non\-zero exit blocks the update (exit status 3).
.TP
\fI/etc/repo\-deploy/post\-update.d/\fR
Post\-update hooks: run after the switch; a non\-zero exit restores the previous release
(exit status 4).
.TP
\fI/var/deploy/current\fR
The live path the application watches: a symlink to the live release.
.TP
\fI/var/deploy/releases/\fR, \fI/var/deploy/state.json\fR, \fI/var/deploy/.lock\fR
Releases on disk, the agent's state, and the lock held by a running agent.
.SH ENVIRONMENT
.TP
\fBREPO_DEPLOY_\fR\fIKEY\fR
Every configuration key, upper case with \fB_\fR for \fB\-\fR (for example
\fBREPO_DEPLOY_REMOTE\fR, \fBREPO_DEPLOY_HOOK_TIMEOUT\fR). Precedence: command line, then
environment, then configuration file, then default.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop cleanly: an update that has not switched yet is cancelled; one that has switched runs
to its end.
.TP
\fBSIGHUP\fR
Re\-read the configuration; a broken one is logged and the old one kept.
.TP
\fBSIGUSR1\fR
Check now.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBcrontab\fR(5); the README and docs/ in \fI/usr/share/doc/repo\-deploy/\fR.
"#;
