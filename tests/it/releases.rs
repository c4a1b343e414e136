//! Retention: `keep` counts the releases left on disk, the live one included, and never
//! removes the live release or the one before it.

use std::fs;

use crate::common::*;

fn deploy_version(env: &Env, version: &str) -> std::path::PathBuf {
    let path = env.root.join("app.zip");
    zip(&path, &[file("version.txt", format!("{version}\n"), 0o644)]);
    env.fetch(path.to_str().expect("utf8")).expect_code(0);
    let live = env.live_release();
    assert_eq!(
        fs::read_to_string(live.join("version.txt")).expect("version"),
        format!("{version}\n")
    );
    live
}

#[test]
fn keep_two_leaves_the_live_release_and_the_one_before() {
    let env = Env::new();
    env.config("keep = 2\n");
    let mut lives = Vec::new();
    for (i, v) in ["v1", "v2", "v3", "v4"].into_iter().enumerate() {
        lives.push(deploy_version(&env, v));
        let mut expected: Vec<_> = lives[i.saturating_sub(1)..].to_vec();
        expected.sort();
        assert_eq!(env.releases(), expected, "after deploying {v}");
        env.assert_clean();
    }
}

#[test]
fn default_keep_is_five() {
    let env = Env::new();
    let mut lives = Vec::new();
    for v in ["v1", "v2", "v3", "v4", "v5", "v6", "v7"] {
        lives.push(deploy_version(&env, v));
    }
    let kept: Vec<String> = env
        .releases()
        .iter()
        .map(|r| {
            fs::read_to_string(r.join("version.txt"))
                .expect("version")
                .trim()
                .to_string()
        })
        .collect();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    assert_eq!(
        kept_sorted,
        ["v3", "v4", "v5", "v6", "v7"],
        "the five newest releases are kept"
    );
    let mut expected = lives[2..].to_vec();
    expected.sort();
    assert_eq!(env.releases(), expected);
}

#[test]
fn rollback_target_survives_retention() {
    // keep = 2 after a rollback: the restored live release and the failed one may stay, but
    // the live one must never be removed.
    let env = Env::new();
    env.config("keep = 2\n");
    let flag = env.out("fail");
    env.post_hook(
        "50-check",
        &format!(
            "if [ -e {} ] && [ \"$DEPLOY_ROLLBACK\" = 0 ]; then exit 1; fi",
            flag.display()
        ),
    );
    deploy_version(&env, "v1");
    let live = deploy_version(&env, "v2");
    fs::write(&flag, "").expect("flag");
    let path = env.root.join("app.zip");
    zip(&path, &[file("version.txt", "v3\n", 0o644)]);
    env.fetch(path.to_str().expect("utf8")).expect_code(4);
    assert_eq!(env.live_release(), live);
    assert!(env.releases().contains(&live));
    assert!(env.releases().len() <= 2, "keep = 2: {:?}", env.releases());
    env.assert_clean();
}

#[test]
fn a_lower_keep_prunes_at_the_next_start_without_a_deploy() {
    // Also what the next start does after a kill between the post-update hooks and the
    // retention: the releases beyond `keep` go, never the live one or the one before it.
    let env = Env::new();
    let lives: Vec<_> = ["v1", "v2", "v3", "v4"]
        .into_iter()
        .map(|v| deploy_version(&env, v))
        .collect();
    let remote = env.root.join("app.zip");
    let remote = remote.to_str().expect("utf8");
    env.run(&["-r", remote, "rollback"]).expect_code(0);
    assert_eq!(
        env.live_release(),
        lives[2],
        "v3 is live, v4 was live before it"
    );
    env.config("keep = 2\n");

    let out = env.fetch(remote);

    out.expect_code(0);
    assert!(
        out.stderr.contains("removed old releases"),
        "{}",
        out.stderr
    );
    let mut expected = vec![lives[2].clone(), lives[3].clone()];
    expected.sort();
    assert_eq!(
        env.releases(),
        expected,
        "the live v3 and v4, live before it"
    );
    assert_eq!(env.live_release(), lives[2]);
    env.assert_clean();
}
