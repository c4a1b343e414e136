//! Signed releases with `trusted-keys` (issue 13, SPEC § Signed releases): keys and signatures
//! made by Debian's `minisign`, checked by the agent; every hostile case ends in exit 6 with
//! `current` unchanged and nothing left behind. Local ZIP remotes for most cases; nginx for
//! the conditional requests of a refused pair and for the ranged path.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::minisign::{key_id, keypair_unencrypted, sign};
use crate::common::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A deploy environment whose configuration trusts `keys` (public key files, concatenated).
struct Signed {
    env: Env,
    keys: PathBuf,
    secret: PathBuf,
    public: PathBuf,
    zip: PathBuf,
}

impl Signed {
    fn new(extra: &str) -> Signed {
        let env = Env::new();
        let (public, secret) = keypair_unencrypted(&env.root, "release");
        let keys = env.root.join("trusted.pub");
        fs::copy(&public, &keys).expect("trusted keys");
        env.config(&format!("trusted-keys = {}\n{extra}", keys.display()));
        let zip = env.root.join("app.zip");
        Signed {
            env,
            keys,
            secret,
            public,
            zip,
        }
    }

    /// Write version `n` of the bundle to the remote (atomically), unsigned.
    fn put(&self, n: u32) -> Vec<u8> {
        let tmp = self.env.root.join("app.zip.tmp");
        let bytes = zip_files(&tmp, &[("index.html", &format!("version {n}\n"), 0o644)]);
        fs::rename(&tmp, &self.zip).expect("publish");
        bytes
    }

    fn sign(&self, comment: Option<&str>) {
        sign(&self.secret, &self.zip, comment);
    }

    fn sig(&self) -> PathBuf {
        PathBuf::from(format!("{}.minisig", self.zip.display()))
    }

    fn fetch(&self) -> Output {
        self.env.fetch(self.zip.to_str().expect("utf8"))
    }

    fn live_text(&self) -> Option<String> {
        fs::read_to_string(self.env.current().join("index.html")).ok()
    }

    /// Exit 6 naming `reason`, `current` unchanged, nothing left behind, no release added.
    fn assert_refused(&self, out: &Output, reason: &str, what: &str) {
        let before = (self.live_text(), self.env.releases());
        out.expect_code(6);
        assert!(
            out.stderr.contains(reason),
            "{what}: expected {reason:?} in {}",
            out.dump()
        );
        assert_eq!((self.live_text(), self.env.releases()), before, "{what}");
        self.env.assert_clean();
    }
}

/// A comment with this file name and signed time.
fn comment(timestamp: u64, file: &str) -> String {
    format!("timestamp:{timestamp}\tfile:{file}\thashed")
}

#[test]
fn a_bundle_signed_by_minisign_deploys_and_hooks_see_the_key_id() {
    let s = Signed::new("");
    let dump = s.env.out("pre-env");
    s.env
        .pre_hook("10-env", &format!("env -0 > {}\n", dump.display()));
    s.put(1);
    s.sign(None);
    let out = s.fetch();
    out.expect_code(0);
    assert_eq!(s.live_text().as_deref(), Some("version 1\n"));
    let env = read_env_dump(&dump);
    assert_eq!(
        env.get("DEPLOY_SIGNER"),
        Some(&key_id(&s.public)),
        "{env:?}"
    );
    let status = s.env.run(&["-r", s.zip.to_str().expect("utf8"), "status"]);
    assert!(
        status.stdout.contains(&key_id(&s.public)),
        "{}",
        status.dump()
    );
    // Unchanged: nothing is verified or downloaded again.
    s.fetch().expect_code(0);
}

#[test]
fn hostile_bundles_and_signatures_are_refused_with_exit_6() {
    let s = Signed::new("max-signature-age = 30d\n");
    let t = now() - 100;
    s.put(1);
    s.sign(Some(&comment(t, "app.zip")));
    s.fetch().expect_code(0);

    // 1. One byte of the ZIP changed after signing.
    let mut bytes = s.put(2);
    s.sign(None);
    let last = bytes.len() - 30;
    bytes[last] ^= 0x01;
    write_atomic(&s.zip, &bytes);
    s.assert_refused(&s.fetch(), "bad signature", "a changed byte");

    // 2. A signature by a key that is not trusted.
    s.put(3);
    let (_, stranger) = keypair_unencrypted(&s.env.root, "stranger");
    sign(&stranger, &s.zip, None);
    s.assert_refused(&s.fetch(), "not in trusted-keys", "an unknown key");

    // 3. No signature at all.
    fs::remove_file(s.sig()).expect("remove .minisig");
    s.assert_refused(&s.fetch(), "no signature", "no .minisig");

    // 4. Truncated, empty, garbage.
    s.sign(None);
    let good = fs::read_to_string(s.sig()).expect("sig");
    for (bad, what) in [
        (good[..good.len() / 2].to_string(), "truncated"),
        (String::new(), "empty"),
        ("garbage\n".repeat(5), "garbage"),
    ] {
        write_atomic(&s.sig(), bad.as_bytes());
        s.assert_refused(&s.fetch(), "malformed", what);
    }

    // 5. The trusted comment edited: the signature no longer covers it.
    let edited = good.replace("file:app.zip", "file:app.zip\tpromoted");
    assert_ne!(edited, good);
    write_atomic(&s.sig(), edited.as_bytes());
    s.assert_refused(&s.fetch(), "bad signature", "an edited comment");

    // 7. A valid signature of another application's bundle (`file:` differs).
    s.sign(Some(&comment(now(), "billing.zip")));
    s.assert_refused(&s.fetch(), "billing.zip", "another file");

    // 8. Older than max-signature-age.
    s.sign(Some(&comment(now() - 31 * 86_400, "app.zip")));
    s.assert_refused(&s.fetch(), "max-signature-age", "an expired signature");

    // And the good pair deploys.
    let status = s.env.run(&["-r", s.zip.to_str().expect("utf8"), "status"]);
    assert!(
        status.stdout.contains("refused:") && status.stdout.contains("expired"),
        "{}",
        status.dump()
    );
    s.sign(Some(&comment(t + 1, "app.zip")));
    s.fetch().expect_code(0);
    assert_eq!(s.live_text().as_deref(), Some("version 3\n"));
}

#[test]
fn an_older_signed_bundle_cannot_replace_a_newer_one_even_after_the_record_is_lost() {
    let s = Signed::new("");
    let t = now() - 1000;
    s.put(1);
    s.sign(Some(&comment(t, "app.zip")));
    let v1 = (
        fs::read(&s.zip).expect("v1"),
        fs::read(s.sig()).expect("sig1"),
    );
    s.fetch().expect_code(0);
    s.put(2);
    s.sign(Some(&comment(t + 10, "app.zip")));
    s.fetch().expect_code(0);
    assert_eq!(s.live_text().as_deref(), Some("version 2\n"));

    // 6. The old, validly signed pair replayed.
    write_atomic(&s.sig(), &v1.1);
    write_atomic(&s.zip, &v1.0);
    s.assert_refused(&s.fetch(), "older than", "a replayed older bundle");

    // A different bundle signed with the newest verified time.
    s.put(3);
    s.sign(Some(&comment(t + 10, "app.zip")));
    s.assert_refused(&s.fetch(), "same signed time", "the same timestamp");

    // A corrupt record fails closed, even for a good new bundle, and says how to reset it.
    let record = s.env.deploy.join("trust.json");
    fs::write(&record, b"{ not json").expect("corrupt");
    s.put(4);
    s.sign(Some(&comment(t + 20, "app.zip")));
    let out = s.fetch();
    out.expect_code(1);
    assert!(out.stderr.contains("rm "), "{}", out.dump());
    assert_eq!(s.live_text().as_deref(), Some("version 2\n"));

    // Removed, it is rebuilt from the live release's signature: the replay is still refused.
    fs::remove_file(&record).expect("rm trust.json");
    write_atomic(&s.sig(), &v1.1);
    write_atomic(&s.zip, &v1.0);
    let out = s.fetch();
    s.assert_refused(&out, "older than", "a replay after the record was rebuilt");
    assert!(out.stderr.contains("rebuilt"), "{}", out.dump());
    assert!(record.exists());
}

#[test]
fn key_rotation_in_three_steps() {
    let s = Signed::new("");
    let (new_public, new_secret) = keypair_unencrypted(&s.env.root, "next");
    // Step 1: both keys trusted; bundles from either deploy.
    let both = format!(
        "{}{}",
        fs::read_to_string(&s.public).expect("old"),
        fs::read_to_string(&new_public).expect("new")
    );
    fs::write(&s.keys, both).expect("keys");
    let t = now() - 100;
    s.put(1);
    s.sign(Some(&comment(t, "app.zip")));
    s.fetch().expect_code(0);
    s.put(2);
    sign(&new_secret, &s.zip, Some(&comment(t + 1, "app.zip")));
    s.fetch().expect_code(0);
    assert_eq!(s.live_text().as_deref(), Some("version 2\n"));
    // Step 3: the old key removed; its bundles are refused.
    fs::copy(&new_public, &s.keys).expect("keys");
    s.put(3);
    s.sign(Some(&comment(t + 2, "app.zip")));
    s.assert_refused(
        &s.fetch(),
        &key_id(&s.public),
        "a bundle of the retired key",
    );
    sign(&new_secret, &s.zip, Some(&comment(t + 3, "app.zip")));
    s.fetch().expect_code(0);
    assert_eq!(s.live_text().as_deref(), Some("version 3\n"));
}

#[test]
fn a_refused_pair_costs_two_conditional_requests_until_one_of_them_changes() {
    let env = Env::new();
    let (public, secret) = keypair_unencrypted(&env.root, "release");
    env.config(&format!("trusted-keys = {}\n", public.display()));
    let nginx = Nginx::start(&env.root, &[]);
    let put = |name: &str, path: &Path| nginx.publish(name, &fs::read(path).expect("read"));
    let url = nginx.url("app.zip");
    let staged = env.root.join("stage.zip");
    let publish = |n: u32| {
        zip_files(&staged, &[("index.html", &format!("v{n}\n"), 0o644)]);
        sign(
            &secret,
            &staged,
            Some(&comment(now() + u64::from(n), "app.zip")),
        );
    };
    let sig_of = |p: &Path| PathBuf::from(format!("{}.minisig", p.display()));
    publish(1);
    put("app.zip.minisig", &sig_of(&staged));
    put("app.zip", &staged);
    env.fetch(&url).expect_code(0);

    // 9. A publish in progress: the new ZIP is up, its signature not yet.
    publish(2);
    let new_sig = fs::read(sig_of(&staged)).expect("sig 2");
    put("app.zip", &staged);
    let out = env.fetch(&url);
    out.expect_code(6);
    assert!(out.stderr.contains("bad signature"), "{}", out.dump());
    // Again: conditional requests only, nothing downloaded.
    let mark = nginx.access_log().len();
    env.fetch(&url).expect_code(6);
    let again: Vec<Access> = nginx.access_log().into_iter().skip(mark).collect();
    assert_eq!(again.len(), 2, "{again:#?}");
    assert!(
        again
            .iter()
            .all(|a| a.status == 304 && !a.if_none_match.is_empty()),
        "{again:#?}"
    );
    // The signature arrives: deployed at the next check.
    nginx.publish("app.zip.minisig", &new_sig);
    env.fetch(&url).expect_code(0);
    assert_eq!(
        fs::read_to_string(env.current().join("index.html")).expect("live"),
        "v2\n"
    );
    env.assert_clean();
    // Live and unchanged: one conditional request, as without signatures.
    let mark = nginx.access_log().len();
    env.fetch(&url).expect_code(0);
    let unchanged: Vec<Access> = nginx.access_log().into_iter().skip(mark).collect();
    assert_eq!(unchanged.len(), 1, "{unchanged:#?}");
    assert_eq!(unchanged[0].status, 304, "{unchanged:#?}");
}

#[test]
fn a_tampered_zip_is_downloaded_whole_and_no_byte_of_it_reaches_a_release() {
    // 14. With reuse on, an update would be ranged; under trusted-keys the whole ZIP is
    // fetched (the signature covers every byte), and a tampered one is refused.
    let env = Env::new();
    let (public, secret) = keypair_unencrypted(&env.root, "release");
    env.config(&format!(
        "trusted-keys = {}\nreuse = copy\n",
        public.display()
    ));
    let nginx = Nginx::start_ranged(&env.root);
    let url = nginx.url("app.zip");
    let files = |marker: &str| -> Vec<(String, String)> {
        (0..50)
            .map(|i| {
                (
                    format!("f{i:02}.txt"),
                    format!("file {i} {}\n", if i == 7 { marker } else { "same" }),
                )
            })
            .collect()
    };
    let write = |marker: &str| {
        let f = files(marker);
        let entries: Vec<(&str, &str, u32)> = f
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_str(), 0o644))
            .collect();
        zip_files(&nginx.www.join("app.zip"), &entries)
    };
    write("v1");
    sign(&secret, &nginx.www.join("app.zip"), None);
    env.fetch(&url).expect_code(0);
    let mark = nginx.ranged_log().len();
    write("EVIL-PAYLOAD-7c1e");
    let out = env.fetch(&url);
    out.expect_code(6);
    let lines: Vec<_> = nginx.ranged_log().into_iter().skip(mark).collect();
    assert!(
        lines.iter().all(|l| l.range.is_empty()),
        "no ranged request under trusted-keys: {lines:#?}"
    );
    assert!(
        files_containing(&env.releases_dir(), b"EVIL-PAYLOAD-7c1e").is_empty(),
        "a byte of the refused ZIP reached releases/"
    );
    assert_eq!(env.releases().len(), 1);
    env.assert_clean();
}

#[test]
fn trust_settings_that_cannot_work_are_configuration_errors() {
    let env = Env::new();
    let site = env.root.join("site");
    fs::create_dir_all(&site).expect("site");
    let (public, _) = keypair_unencrypted(&env.root, "k");
    let garbage = env.root.join("garbage.pub");
    fs::write(&garbage, "untrusted comment: x\nnot a key\n").expect("garbage");
    for (config, remote, expect) in [
        (
            format!("trusted-keys = {}\n", public.display()),
            site.display().to_string(),
            "local directory",
        ),
        (
            format!("trusted-keys = {}\n", garbage.display()),
            "/srv/app.zip".into(),
            "line 2",
        ),
        (
            "trusted-keys = /nonexistent.pub\n".into(),
            "/srv/app.zip".into(),
            "cannot read",
        ),
        (
            format!(
                "trusted-keys = {}\nmax-signature-age = soon\n",
                public.display()
            ),
            "/srv/app.zip".into(),
            "max-signature-age",
        ),
        (
            "max-signature-age = 30d\n".into(),
            "/srv/app.zip".into(),
            "needs trusted-keys",
        ),
        (
            "git-verify = tag\n".into(),
            "/srv/app.zip".into(),
            "git-verify",
        ),
    ] {
        env.config(&config);
        let out = env.fetch(&remote);
        out.expect_code(2);
        assert!(out.stderr.contains(expect), "{config}: {}", out.dump());
    }
}
