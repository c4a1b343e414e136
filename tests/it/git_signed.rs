//! Signed git releases with `allowed-signers` (issue 13): commits and tags signed with SSH
//! keys made by `ssh-keygen`, verified by git; hostile cases 11–13, the `valid-before` trap,
//! and a user git configuration that must not switch verification off.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::git_support::{Output, World};

/// A bare origin `app.git` with a working clone, SSH keys and an allowed-signers file.
struct Signing {
    w: World,
    work: PathBuf,
    remote: String,
    allowed: PathBuf,
    dev: PathBuf,
    stranger: PathBuf,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn public(key: &Path) -> String {
    let text = fs::read_to_string(format!("{}.pub", key.display())).expect("public key");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Signing {
    fn new(verify: &str) -> Signing {
        let w = World::new();
        let keys = w.root.join("keys");
        fs::create_dir_all(&keys).expect("keys");
        let (dev, stranger) = (keys.join("dev"), keys.join("stranger"));
        keygen(&dev);
        keygen(&stranger);
        let allowed = w.root.join("allowed_signers");
        fs::write(&allowed, format!("dev@example.com {}\n", public(&dev))).expect("allowed");
        let origin = w.root.join("app.git");
        let s = Signing {
            work: w.root.join("work"),
            remote: format!("file://{}#main", origin.display()),
            allowed,
            dev,
            stranger,
            w,
        };
        s.git(&s.w.root, &["init", "-q", "--bare", "app.git"], 0);
        s.git(&s.w.root, &["clone", "-q", "app.git", "work"], 0);
        s.w.config(&format!(
            "allowed-signers = {}\ngit-verify = {verify}\n",
            s.allowed.display()
        ));
        s
    }

    /// Real git in `dir` with the committer date `date` (Unix seconds; 0: now).
    fn git(&self, dir: &Path, args: &[&str], date: u64) -> String {
        let mut cmd = Command::new("git");
        cmd.args(["-c", "init.defaultBranch=main", "-c", "gpg.format=ssh"])
            .args(args)
            .current_dir(dir)
            .env("HOME", &self.w.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Dev")
            .env("GIT_AUTHOR_EMAIL", "dev@example.com")
            .env("GIT_COMMITTER_NAME", "Dev")
            .env("GIT_COMMITTER_EMAIL", "dev@example.com")
            .stdin(Stdio::null());
        if date > 0 {
            cmd.env("GIT_COMMITTER_DATE", format!("@{date} +0000"))
                .env("GIT_AUTHOR_DATE", format!("@{date} +0000"));
        }
        let out = cmd.output().expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Commit `text` as index.html, signed with `key` (or unsigned), committed at `date`, and
    /// push `main`; the commit id.
    fn commit(&self, text: &str, key: Option<&Path>, date: u64) -> String {
        fs::write(self.work.join("index.html"), text).expect("write");
        self.git(&self.work, &["add", "-A"], date);
        let signing = key.map(|k| format!("user.signingkey={}", k.display()));
        let mut args: Vec<&str> = Vec::new();
        if let Some(s) = &signing {
            args.extend(["-c", s.as_str(), "commit", "-q", "-S", "-m", text]);
        } else {
            args.extend(["commit", "-q", "-m", text]);
        }
        self.git(&self.work, &args, date);
        self.git(&self.work, &["push", "-q", "origin", "main"], date);
        self.git(&self.work, &["rev-parse", "HEAD"], 0)
    }

    fn run(&self, remote: &str) -> Output {
        self.w.run(remote)
    }

    fn live(&self) -> Option<String> {
        fs::read_to_string(self.w.current().join("index.html")).ok()
    }

    #[track_caller]
    fn assert_refused(&self, out: &Output, expect: &str) {
        out.expect_code(6);
        assert!(out.stderr.contains(expect), "{expect}: {}", out.stderr);
    }
}

const T: u64 = 1_790_000_000;

#[test]
fn signed_commits_deploy_and_unsigned_or_foreign_ones_are_refused() {
    let s = Signing::new("commit");
    s.commit("v1", Some(&s.dev), T);
    s.run(&s.remote).expect_code(0);
    assert_eq!(s.live().as_deref(), Some("v1"));
    let env = fs::read_to_string(s.w.out.join("env-post")).expect("env");
    assert!(env.contains("DEPLOY_SIGNER=dev@example.com"), "{env}");

    // 11. An unsigned commit on top of a signed one.
    let unsigned = s.commit("v2 unsigned", None, T + 10);
    let out = s.run(&s.remote);
    s.assert_refused(&out, "is not signed");
    assert!(out.stderr.contains(&unsigned), "{}", out.stderr);
    assert_eq!(s.live().as_deref(), Some("v1"));
    // Not fetched again while the branch still names it: exit 6 from ls-remote alone.
    let again = s.run(&s.remote);
    s.assert_refused(&again, "is not signed");

    // 12. Signed by a key that is not in allowed-signers.
    s.commit("v3 stranger", Some(&s.stranger), T + 20);
    s.assert_refused(&s.run(&s.remote), "not signed by a key in allowed-signers");
    assert_eq!(s.live().as_deref(), Some("v1"));

    // A user configuration that points git at a file allowing the stranger changes nothing:
    // the agent runs git with the user's and the system's configuration ignored.
    let lax = s.w.root.join("lax_signers");
    fs::write(&lax, format!("dev@example.com {}\n", public(&s.stranger))).expect("lax");
    fs::write(
        s.w.home.join(".gitconfig"),
        format!("[gpg \"ssh\"]\n\tallowedSignersFile = {}\n", lax.display()),
    )
    .expect("gitconfig");
    s.assert_refused(&s.run(&s.remote), "not signed by a key in allowed-signers");

    // A signed commit that is older than the live one.
    s.commit("v0 backdated", Some(&s.dev), T - 100);
    s.assert_refused(&s.run(&s.remote), "older than");

    s.commit("v4", Some(&s.dev), T + 30);
    s.run(&s.remote).expect_code(0);
    assert_eq!(s.live().as_deref(), Some("v4"));
}

#[test]
fn tag_mode_needs_a_signed_annotated_tag_on_a_newer_commit() {
    let s = Signing::new("tag");
    let tag_remote = s.remote.replace("#main", "#release");
    let tag = |name: &str, signed: bool, date: u64| {
        let key = format!("user.signingkey={}", s.dev.display());
        let mut args = vec!["-c", key.as_str(), "tag", "-f", "-a", name, "-m", name];
        if signed {
            args.insert(4, "-s");
        }
        s.git(&s.work, &args, date);
        s.git(&s.work, &["push", "-q", "-f", "origin", name], date);
    };
    s.commit("v1", None, T);
    tag("release", true, T);
    s.run(&tag_remote).expect_code(0);
    assert_eq!(s.live().as_deref(), Some("v1"));

    // 13a. An unsigned tag.
    s.commit("v2", None, T + 10);
    tag("release", false, T + 10);
    s.assert_refused(&s.run(&tag_remote), "is not signed");

    // 13b. A signed tag pointing at a commit older than the live one.
    s.git(&s.work, &["checkout", "-q", "-b", "old", "HEAD~1"], 0);
    fs::write(s.work.join("index.html"), "v0").expect("write");
    s.git(&s.work, &["commit", "-q", "-am", "v0"], T - 50);
    tag("release", true, T - 50);
    s.assert_refused(&s.run(&tag_remote), "older than");
    assert_eq!(s.live().as_deref(), Some("v1"));

    // A branch is not a tag.
    let out = s.run(&s.remote);
    s.assert_refused(&out, "not an annotated tag");
}

#[test]
fn a_key_retired_with_valid_before_still_verifies_a_backdated_commit_so_retire_by_removal() {
    // The trap: git judges a key at the commit's own committer date, which its signer chose.
    // A key retired with `valid-before` keeps verifying commits dated before that day, as long
    // as they are newer than the live commit. Retire keys by removing them (docs/SECURITY.md);
    // this test keeps both facts true.
    const JAN_2026: u64 = 1_767_225_600;
    const MAY_2026: u64 = 1_777_593_600;
    let s = Signing::new("commit");
    s.commit("v1", Some(&s.dev), JAN_2026);
    s.run(&s.remote).expect_code(0);
    let retired = format!(
        "dev@example.com valid-before=\"20260601\" {}\n",
        public(&s.dev)
    );
    fs::write(&s.allowed, retired).expect("retire");
    // Dated honestly (after the retirement): refused.
    s.commit("v2 late", Some(&s.dev), T);
    s.assert_refused(&s.run(&s.remote), "not signed by a key in allowed-signers");
    // Backdated to before the retirement: git accepts it (the trap).
    s.commit("v3 backdated", Some(&s.dev), MAY_2026);
    s.run(&s.remote).expect_code(0);
    assert_eq!(s.live().as_deref(), Some("v3 backdated"));
    // Removed from allowed-signers, the key verifies nothing, whatever the date.
    fs::write(
        &s.allowed,
        format!("other@example.com {}\n", public(&s.stranger)),
    )
    .expect("rm");
    s.commit("v4 backdated", Some(&s.dev), MAY_2026 + 10);
    s.assert_refused(&s.run(&s.remote), "not signed by a key in allowed-signers");
    assert_eq!(s.live().as_deref(), Some("v3 backdated"));
}
