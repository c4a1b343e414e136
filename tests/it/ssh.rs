//! Git over SSH against a real `sshd` of the test's own on 127.0.0.1 (bug 9 of issue 11): a
//! deploy through a host alias of the agent's ssh configuration, and the two commonest ways
//! an SSH login fails, which must reach the operator with ssh's own reason and a hint, not
//! only git's "Could not read from remote repository".
//!
//! The agent is pointed at the test's ssh configuration with `GIT_SSH_COMMAND` in its
//! environment, which it passes through to git (see `git_support/sshd.rs`).

use std::fs;

use crate::git_support::{Output, Repos, SshClient, Sshd, World, keygen, ssh_user, tree};

/// A world with the fixture repositories in `origin`, an sshd and an ssh client for it.
fn setup(world: &World) -> (Repos<'_>, Sshd, SshClient) {
    let origin = world.root.join("origin");
    let repos = Repos::new(world, &origin);
    let sshd = Sshd::start(world);
    let client = SshClient::new(world, &sshd);
    (repos, sshd, client)
}

fn run(world: &World, client: &SshClient, remote: &str) -> Output {
    let ssh = client.ssh_command();
    world.run_env(remote, &[("GIT_SSH_COMMAND", ssh.as_str())])
}

/// The output and, on failure, what sshd said about the login.
fn dump(out: &Output, sshd: &Sshd) -> String {
    format!(
        "stderr:\n{}\nsshd:\n{}",
        out.stderr,
        fs::read_to_string(&sshd.log).unwrap_or_default()
    )
}

#[test]
fn a_host_alias_without_user_and_a_ref_after_dot_git_deploys_over_ssh() {
    let world = World::new();
    let (repos, sshd, client) = setup(&world);
    sshd.authorize(&client.public);
    client.trust(&sshd);
    // The scp-like form without `user@`, `#ref` right after `.git` (bug 9: this was taken for
    // a local path); the submodules' relative URLs resolve to the same alias.
    let remote = format!("deployhost:{}/app.git#next", repos.origin.display());
    let out = run(&world, &client, &remote);
    assert_eq!(out.status.code(), Some(0), "{}", dump(&out, &sshd));
    let t = tree(&world.live());
    assert_eq!(
        t.get("site/index.html").map(String::as_str),
        Some("file 644 <h1>next</h1>\n"),
        "branch `next`, the whole tree: {t:#?}"
    );
    assert_eq!(
        t.get("site/lib/vendor/deep.txt").map(String::as_str),
        Some("file 644 deep v1\n"),
        "submodules over ssh: {t:#?}"
    );
    assert_eq!(
        world.take_log().last(),
        Some(&format!("post {}", repos.rev("next")))
    );

    // The `ssh://user@host:port/path` form, a sub-directory and a tag.
    let remote = format!(
        "ssh://{}@127.0.0.1:{}{}/app.git/site#v1",
        ssh_user(),
        sshd.port,
        repos.origin.display()
    );
    let out = run(&world, &client, &remote);
    assert_eq!(out.status.code(), Some(0), "{}", dump(&out, &sshd));
    let t = tree(&world.live());
    assert_eq!(
        t.get("index.html").map(String::as_str),
        Some("file 644 <h1>v1</h1>\n"),
        "tag v1, only /site: {t:#?}"
    );
    assert_eq!(
        t.get("lib/lib.txt").map(String::as_str),
        Some("file 644 lib v1\n")
    );
}

#[test]
fn an_unknown_host_key_fails_saying_so_with_a_hint() {
    let world = World::new();
    let (repos, sshd, client) = setup(&world);
    sshd.authorize(&client.public);
    // known_hosts stays empty, and StrictHostKeyChecking is yes.
    let remote = format!("deployhost:{}/app.git", repos.origin.display());
    let out = run(&world, &client, &remote);
    assert_eq!(out.status.code(), Some(1), "{}", dump(&out, &sshd));
    assert!(
        out.stderr.contains("Host key verification failed"),
        "ssh's reason is kept: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("known_hosts") && out.stderr.contains("ssh-keyscan"),
        "a hint says what to do: {}",
        out.stderr
    );
    assert!(!world.current().exists(), "nothing deployed");
}

#[test]
fn a_key_the_server_refuses_fails_saying_so_with_a_hint() {
    let world = World::new();
    let (repos, sshd, client) = setup(&world);
    client.trust(&sshd);
    // Another key is authorized, not the client's.
    sshd.authorize(&keygen(&world.root.join("other_key")));
    let remote = format!("deployhost:{}/app.git", repos.origin.display());
    let out = run(&world, &client, &remote);
    assert_eq!(out.status.code(), Some(1), "{}", dump(&out, &sshd));
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "ssh's reason is kept: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("IdentityFile"),
        "a hint says what to check: {}",
        out.stderr
    );
    assert!(!world.current().exists(), "nothing deployed");
}
