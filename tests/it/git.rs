//! Git remotes (issue #3), end to end: the real binary against `git daemon` (git://), smart
//! HTTP (`git http-backend` behind nginx + fcgiwrap) and `file://`, all on loopback.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::git_support::{CmdlineWatch, GitDaemon, HttpGit, Repos, World, listing, tree};

/// What a deploy of `app` at `/site` on `main` (first version) must contain: the files with
/// their committed modes, the symlink, and both levels of submodules.
fn assert_site_v1(release: &Path) {
    let t = tree(release);
    assert_eq!(
        t.get("index.html").map(String::as_str),
        Some("file 644 <h1>v1</h1>\n"),
        "{t:#?}"
    );
    assert_eq!(
        t.get("bin/run.sh").map(String::as_str),
        Some("file 755 #!/bin/sh\necho run\n")
    );
    assert_eq!(t.get("link").map(String::as_str), Some("link index.html"));
    assert_eq!(
        t.get("lib/lib.txt").map(String::as_str),
        Some("file 644 lib v1\n")
    );
    assert_eq!(
        t.get("lib/vendor/deep.txt").map(String::as_str),
        Some("file 644 deep v1\n")
    );
    assert!(
        !t.contains_key("README.md") && !t.contains_key("other"),
        "only /site is deployed: {t:#?}"
    );
    assert_no_dot_git(release);
}

fn assert_no_dot_git(release: &Path) {
    let t = tree(release);
    let found: Vec<&String> = t
        .keys()
        .filter(|k| k.split('/').any(|c| c == ".git"))
        .collect();
    assert!(found.is_empty(), "no .git in a release: {found:?}");
}

fn env_value(world: &World, key: &str) -> String {
    let env = fs::read_to_string(world.out.join("env-post")).expect("post hook ran");
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in the hook's environment"))
        .to_string()
}

#[test]
fn deploys_a_sub_directory_with_submodules_over_git_daemon_and_an_unchanged_check_fetches_nothing()
{
    let world = World::new();
    let origin = world.root.join("origin");
    let repos = Repos::new(&world, &origin);
    let daemon = GitDaemon::start(&world, &origin);
    let remote = format!("{}/site", daemon.url("app.git"));

    world.run(&remote).expect_code(0);
    let head = repos.head();
    assert_site_v1(&world.live());
    assert_eq!(
        world.take_log(),
        [format!("pre {head}"), format!("post {head}")]
    );
    assert_eq!(
        env_value(&world, "DEPLOY_VERSION"),
        head,
        "DEPLOY_VERSION is the full commit id"
    );
    assert_eq!(env_value(&world, "DEPLOY_REMOTE"), remote);
    world.take_git_log();

    // Nothing moved: one ls-remote, no fetch, no object written, no hook.
    let cache = world.cache();
    let before = listing(&cache);
    let out = world.run(&remote);
    out.expect_code(0);
    assert!(out.stderr.contains("unchanged"), "{}", out.stderr);
    let ran = world.take_git_log();
    assert_eq!(ran.len(), 1, "only ls-remote runs: {ran:?}");
    assert!(ran[0].contains(" ls-remote -- "), "{ran:?}");
    assert_eq!(listing(&cache), before, "the cache is untouched");
    assert!(world.take_log().is_empty(), "no hook runs");
}

#[test]
fn a_commit_outside_the_path_is_no_change_and_one_inside_redeploys() {
    let world = World::new();
    let origin = world.root.join("origin");
    let repos = Repos::new(&world, &origin);
    let daemon = GitDaemon::start(&world, &origin);
    let remote = format!("{}/site", daemon.url("app.git"));
    world.run(&remote).expect_code(0);
    let first = world.live();
    world.take_log();

    // Outside /site: fetched once to compare trees, but no release and no hook.
    let outside = repos.commit(&[("other/notes.txt", "notes v2\n")], "outside");
    let out = world.run(&remote);
    out.expect_code(0);
    assert!(out.stderr.contains("unchanged"), "{}", out.stderr);
    assert_eq!(world.live(), first, "no new release");
    assert!(
        world.take_log().is_empty(),
        "no hook for a commit outside /site"
    );
    let state = fs::read_to_string(world.deploy.join("state.json")).expect("state");
    assert!(
        state.contains(&outside),
        "the new commit is remembered: {state}"
    );
    world.take_git_log();
    world.run(&remote).expect_code(0);
    let ran = world.take_git_log();
    assert!(
        ran.iter().all(|l| l.contains(" ls-remote -- ")),
        "remembered, so not fetched again: {ran:?}"
    );

    // Inside /site: a new release and the hooks.
    let inside = repos.commit(&[("site/index.html", "<h1>v2</h1>\n")], "inside");
    world.run(&remote).expect_code(0);
    assert_ne!(world.live(), first);
    assert_eq!(
        fs::read_to_string(world.live().join("index.html")).expect("read"),
        "<h1>v2</h1>\n"
    );
    assert_eq!(
        world.take_log(),
        [format!("pre {inside}"), format!("post {inside}")]
    );
    assert_eq!(env_value(&world, "DEPLOY_PREVIOUS_VERSION"), outside);
}

#[test]
fn deploys_the_default_branch_a_branch_and_a_tag_over_file_urls() {
    let world = World::new();
    let origin = world.root.join("origin");
    let repos = Repos::new(&world, &origin);
    let base = format!("file://{}/app.git", origin.display());

    // The whole tree of the default branch, submodules included.
    world.run(&base).expect_code(0);
    let t = tree(&world.live());
    assert_eq!(
        t.get("README.md").map(String::as_str),
        Some("file 644 # app\n")
    );
    assert_eq!(
        t.get("other/notes.txt").map(String::as_str),
        Some("file 644 notes v1\n")
    );
    assert_eq!(
        t.get("site/lib/vendor/deep.txt").map(String::as_str),
        Some("file 644 deep v1\n")
    );
    assert_eq!(
        t.get(".gitmodules")
            .map(|v| v.starts_with("file 644 [submodule")),
        Some(true)
    );
    assert_no_dot_git(&world.live());
    assert_eq!(env_value(&world, "DEPLOY_VERSION"), repos.head());

    // `#next`: another branch, only its /site.
    world.run(&format!("{base}/site#next")).expect_code(0);
    assert_eq!(
        fs::read_to_string(world.live().join("index.html")).expect("read"),
        "<h1>next</h1>\n"
    );
    assert_eq!(env_value(&world, "DEPLOY_VERSION"), repos.rev("next"));
    assert_eq!(
        world.caches().len(),
        1,
        "a change of ref starts a clean cache and drops the old one"
    );

    // `#v1`: an annotated tag, deployed as its commit.
    world.run(&format!("{base}/site#v1")).expect_code(0);
    assert_site_v1(&world.live());
    assert_eq!(
        env_value(&world, "DEPLOY_VERSION"),
        repos.rev("v1^{commit}")
    );
}

#[test]
fn a_missing_path_or_ref_is_a_clear_error_and_touches_nothing() {
    let world = World::new();
    let origin = world.root.join("origin");
    let _repos = Repos::new(&world, &origin);
    let base = format!("file://{}/app.git", origin.display());
    world.run(&format!("{base}/site")).expect_code(0);
    let live = world.live();
    world.take_log();

    let out = world.run(&format!("{base}/nope"));
    out.expect_code(1);
    assert!(
        out.stderr.contains("`/nope` does not exist in commit"),
        "{}",
        out.stderr
    );
    let out = world.run(&format!("{base}/README.md"));
    out.expect_code(1);
    assert!(
        out.stderr.contains("`/README.md` is not a directory"),
        "{}",
        out.stderr
    );
    let out = world.run(&format!("{base}/site#nope"));
    out.expect_code(1);
    assert!(
        out.stderr.contains("no branch or tag named `nope`"),
        "{}",
        out.stderr
    );
    assert_eq!(world.live(), live);
    assert!(world.take_log().is_empty());
    assert!(
        world.releases().iter().all(|r| !r.starts_with('.')),
        "no leftovers: {:?}",
        world.releases()
    );
}

#[test]
fn a_forced_push_that_rewrites_history_deploys_the_new_tip_over_smart_http() {
    let world = World::new();
    let root = world.root.join("srv");
    let repos = Repos::new(&world, &root);
    let http = HttpGit::start(&world, &root, &[]);
    let remote = format!("{}/site", http.url("app.git"));
    world.run(&remote).expect_code(0);
    assert_site_v1(&world.live());
    let old = repos.head();
    world.take_log();

    let rewritten = repos.amend_and_force_push(&[("site/index.html", "<h1>rewritten</h1>\n")]);
    assert_ne!(old, rewritten);
    world.run(&remote).expect_code(0);
    assert_eq!(
        fs::read_to_string(world.live().join("index.html")).expect("read"),
        "<h1>rewritten</h1>\n"
    );
    assert_eq!(
        fs::read_to_string(world.live().join("lib/vendor/deep.txt")).expect("read"),
        "deep v1\n"
    );
    assert_eq!(
        world.take_log(),
        [format!("pre {rewritten}"), format!("post {rewritten}")]
    );
    assert!(
        http.access_log()
            .iter()
            .any(|l| l.contains("git-upload-pack")),
        "served by http-backend"
    );
}

/// The loose object file of `rev` in a cache repository.
fn object_file(cache: &Path, id: &str) -> std::path::PathBuf {
    let path = cache.join("objects").join(&id[..2]).join(&id[2..]);
    assert!(
        path.is_file(),
        "{} is a loose object in the cache",
        path.display()
    );
    path
}

#[test]
fn a_cache_left_locked_with_a_missing_object_heals() {
    let world = World::new();
    let origin = world.root.join("origin");
    let repos = Repos::new(&world, &origin);
    let daemon = GitDaemon::start(&world, &origin);
    let remote = format!("{}/site", daemon.url("app.git"));
    world.run(&remote).expect_code(0);
    let cache = world.cache();

    // A crash mid-fetch: locks left behind and an object gone (one the next commit reuses).
    fs::remove_file(object_file(&cache, &repos.rev("HEAD:site/bin/run.sh")))
        .expect("delete object");
    fs::write(cache.join("shallow.lock"), "").expect("lock");
    fs::write(cache.join("index.lock"), "").expect("lock");
    let next = repos.commit(&[("site/index.html", "<h1>v2</h1>\n")], "v2");
    let out = world.run(&remote);
    out.expect_code(0);
    assert!(out.stderr.contains("left locked"), "{}", out.stderr);
    assert_eq!(env_value(&world, "DEPLOY_VERSION"), next);
    let t = tree(&world.live());
    assert_eq!(
        t.get("bin/run.sh").map(String::as_str),
        Some("file 755 #!/bin/sh\necho run\n")
    );
    assert_eq!(
        t.get("index.html").map(String::as_str),
        Some("file 644 <h1>v2</h1>\n")
    );
    assert!(!cache.join("shallow.lock").exists() && !cache.join("index.lock").exists());
}

#[test]
fn a_cache_missing_objects_without_a_lock_is_detected_and_rebuilt() {
    let world = World::new();
    let origin = world.root.join("origin");
    let repos = Repos::new(&world, &origin);
    let daemon = GitDaemon::start(&world, &origin);
    let remote = format!("{}/site", daemon.url("app.git"));
    world.run(&remote).expect_code(0);

    // A blob the next commit still needs: the fetch succeeds (the server thinks we have it),
    // reading the tree does not.
    fs::remove_file(object_file(
        &world.cache(),
        &repos.rev("HEAD:site/bin/run.sh"),
    ))
    .expect("delete blob");
    repos.commit(&[("site/index.html", "<h1>v2</h1>\n")], "v2");
    let out = world.run(&remote);
    out.expect_code(0);
    assert!(out.stderr.contains("is damaged"), "{}", out.stderr);
    assert_eq!(
        fs::read_to_string(world.live().join("bin/run.sh")).expect("read"),
        "#!/bin/sh\necho run\n"
    );

    // Garbage in an object file the next commit reuses, and the commit the cache's ref
    // points to gone: detected, rebuilt, deployed.
    let cache = world.cache();
    fs::write(
        object_file(&cache, &repos.rev("HEAD:site/bin/run.sh")),
        b"not zlib",
    )
    .expect("corrupt blob");
    fs::remove_file(object_file(&cache, &repos.head())).expect("delete commit");
    let v3 = repos.commit(&[("site/index.html", "<h1>v3</h1>\n")], "v3");
    let out = world.run(&remote);
    out.expect_code(0);
    assert!(out.stderr.contains("is damaged"), "{}", out.stderr);
    assert_eq!(env_value(&world, "DEPLOY_VERSION"), v3);
    let t = tree(&world.live());
    assert_eq!(
        t.get("index.html").map(String::as_str),
        Some("file 644 <h1>v3</h1>\n")
    );
    assert_eq!(
        t.get("bin/run.sh").map(String::as_str),
        Some("file 755 #!/bin/sh\necho run\n")
    );
}

#[test]
fn an_unreachable_remote_fails_with_exit_1_and_leaves_current_alone() {
    let world = World::new();
    let origin = world.root.join("origin");
    let repos = Repos::new(&world, &origin);
    let mut daemon = GitDaemon::start(&world, &origin);
    let remote = format!("{}/site", daemon.url("app.git"));
    world.run(&remote).expect_code(0);
    let live = world.live();
    let releases = world.releases();
    world.take_log();

    daemon.stop();
    repos.commit(&[("site/index.html", "<h1>v2</h1>\n")], "v2");
    let out = world.run(&remote);
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!(
            "cannot look up the default branch (HEAD) of {remote}"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unable to connect"),
        "git's reason is shown: {}",
        out.stderr
    );
    assert_eq!(world.live(), live);
    assert_eq!(
        world.releases(),
        releases,
        "no release or staging left behind"
    );
    assert!(world.take_log().is_empty());
}

#[test]
fn credentials_in_an_http_url_work_and_never_show() {
    const PASSWORD: &str = "s3cret-Pa55word";
    let world = World::new();
    let root = world.root.join("srv");
    let repos = Repos::new(&world, &root.join("private"));
    let http = HttpGit::start(&world, &root, &[("deploy", PASSWORD)]);
    // Every command line the hooks can see, while they run.
    world.pre_hook(
        "20-cmdlines",
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' >> \"$OUT/cmdlines\"",
    );

    let wrong = world.run(&format!(
        "{}/site",
        http.url_with_auth("deploy", "wrong-password", "private/app.git")
    ));
    wrong.expect_code(1);
    assert!(!wrong.stderr.contains("wrong-password"), "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("Authentication failed"),
        "git's reason is shown: {}",
        wrong.stderr
    );
    assert!(!world.current().exists());

    // The remote comes from the configuration file, as in production: the agent's own
    // command line holds no secret, so none may appear on any command line.
    let remote = format!(
        "{}/site",
        http.url_with_auth("deploy", PASSWORD, "private/app.git")
    );
    world.config(&format!("remote = {remote}\n"));
    let watch = CmdlineWatch::start(PASSWORD);
    let out = world.run_args(&["-f", "-v"]);
    let (hits, gits) = watch.finish();
    out.expect_code(0);
    assert_site_v1(&world.live());
    assert!(
        hits.is_empty(),
        "the password was on {} command lines, e.g. {:?}",
        hits.len(),
        hits.first()
    );
    assert!(gits > 0, "the watcher saw git processes");
    let argv = world.take_git_log().join("\n");
    assert!(
        argv.contains("ls-remote") && argv.contains("fetch"),
        "{argv}"
    );
    assert!(
        !argv.contains(PASSWORD) && !argv.contains("deploy@"),
        "{argv}"
    );
    let cmdlines = fs::read_to_string(world.out.join("cmdlines")).expect("hook ran");
    assert!(!cmdlines.contains(PASSWORD));
    for (what, text) in [
        ("stderr", out.stderr.clone()),
        ("stdout", out.stdout.clone()),
        (
            "hook environment",
            fs::read_to_string(world.out.join("env-post")).expect("env"),
        ),
        (
            "state",
            fs::read_to_string(world.deploy.join("state.json")).expect("state"),
        ),
    ] {
        assert!(
            !text.contains(PASSWORD),
            "the password is in the {what}:\n{text}"
        );
    }
    assert_eq!(
        env_value(&world, "DEPLOY_REMOTE"),
        format!("http://***@127.0.0.1:{}/private/app.git/site", http.port)
    );
    let authed = http
        .access_log()
        .iter()
        .filter(|l| l.contains(" deploy ["))
        .count();
    assert!(
        authed > 0,
        "requests carried the user: {:#?}",
        http.access_log()
    );

    // The submodules live under /private too: the same credentials reached them.
    let next = repos.commit(&[("site/index.html", "<h1>v2</h1>\n")], "v2");
    world.run_args(&["-f"]).expect_code(0);
    assert_eq!(env_value(&world, "DEPLOY_VERSION"), next);
}

#[test]
fn a_submodule_commit_the_server_will_not_serve_by_id_is_found_by_a_full_fetch() {
    let world = World::new();
    // Protocol v0 servers refuse unadvertised object ids; the user's configuration applies.
    fs::write(world.home.join(".gitconfig"), "[protocol]\n\tversion = 0\n").expect("gitconfig");
    let origin = world.root.join("origin");
    let repos = Repos::new(&world, &origin);
    // `lib` moves on; `app` still pins its first commit, no longer a branch tip.
    repos.commit_in("lib", &[("lib.txt", "lib v2\n")], "lib v2");
    let daemon = GitDaemon::start(&world, &origin);
    let out = world.run(&format!("{}/site", daemon.url("app.git")));
    out.expect_code(0);
    assert_site_v1(&world.live());
    let ran = world.take_git_log();
    assert!(
        ran.iter().any(|l| l.contains("refs/heads/*")),
        "fell back to a full fetch: {ran:#?}"
    );
}

#[test]
fn a_remote_that_never_answers_times_out_and_leaves_current_alone() {
    let world = World::new();
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    world.config("connect-timeout = 1\nstall-timeout = 1\n");
    let out = world.run(&format!("git://127.0.0.1:{port}/app.git"));
    out.expect_code(1);
    assert!(
        out.stderr.contains("did not finish within 2s"),
        "{}",
        out.stderr
    );
    assert!(
        out.elapsed < Duration::from_secs(30),
        "took {:?}",
        out.elapsed
    );
    assert!(!world.current().exists());
}

#[test]
fn a_symlink_leaving_the_release_is_refused_as_in_a_zip() {
    let world = World::new();
    let origin = world.root.join("origin");
    let repos = Repos::new(&world, &origin);
    let remote = format!("file://{}/app.git/site", origin.display());
    world.run(&remote).expect_code(0);
    let live = world.live();
    world.take_log();

    std::os::unix::fs::symlink(
        "../../../etc/passwd",
        repos.clone_dir("app").join("site/evil"),
    )
    .expect("symlink");
    repos.commit(&[], "an escaping symlink");
    let out = world.run(&remote);
    out.expect_code(1);
    assert!(
        out.stderr.contains("\"evil\": symlink target"),
        "{}",
        out.stderr
    );
    assert_eq!(world.live(), live);
    assert!(world.take_log().is_empty(), "no hook ran");
    assert!(
        world.releases().iter().all(|r| !r.starts_with('.')),
        "no staging left: {:?}",
        world.releases()
    );
}

#[test]
fn sigterm_during_a_fetch_kills_git_and_leaves_current_alone() {
    let world = World::new();
    // Accepts connections and never says a word: git waits until it is stopped.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let remote = format!("git://127.0.0.1:{port}/app.git");
    let child = world.spawn_args(&["-f", "-v", "-r", &remote]);
    let git_runs = || {
        fs::read_dir("/proc").expect("proc").flatten().any(|p| {
            fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains(" ls-remote ") && c.contains(&remote)
            })
        })
    };
    assert!(
        crate::git_support::eventually(Duration::from_secs(20), git_runs),
        "git ls-remote started"
    );
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = world.finish(child);
    out.expect_code(1);
    assert!(
        out.elapsed < Duration::from_secs(20),
        "stopped promptly: {:?}",
        out.elapsed
    );
    assert!(!git_runs(), "git was killed with the check");
    assert!(!world.current().exists());
}
