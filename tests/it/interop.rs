//! ZIPs as the tools people build with write them (issue 11, bug 8). One source tree (files in
//! sub-directories, an executable, a symlink, an empty directory, a non-ASCII name) is archived
//! at test time by each producer Debian packages: Info-ZIP `zip` (seekable and streamed),
//! libarchive's `bsdtar -a` (a `./` root entry and `./` prefixes), 7-Zip, and Python's
//! `zipfile` with ZIP64 forced; plus a hand-made archive as PowerShell 5.1's `Compress-Archive`
//! writes it (backslash separators, host system MS-DOS, no Unix modes).
//!
//! Each archive is deployed with the real binary (`-f`, a local path remote) and the release is
//! compared with the source: names, contents, exec bits, and symlinks where the producer stores
//! them (as links; a producer that follows them stores the target's bytes). `unzip` extracts
//! each archive too and must produce the same tree: we accept what unzip accepts, the same way.
//!
//! A producer that is not installed fails the test with the package to install; it never skips.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

/// The executable `name` from `PATH` (the first of `names` found), or a failure naming the
/// Debian package that provides it.
fn tool(names: &[&str], package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            let executable = fs::metadata(&candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if executable {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found in PATH: install the Debian package `{package}` (apt-get install -y \
         {package}); CI installs it in .ci/run",
        names.join(" or ")
    );
}

/// Run `cmd` (in `dir`), which must succeed; returns its stdout.
#[track_caller]
fn run(cmd: &mut Command, dir: &Path) -> Vec<u8> {
    let out = cmd
        .current_dir(dir)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const RUN_SH: &str = "#!/bin/sh\necho run\n";
const SETTINGS: &str = "[app]\nname = demo\n";
const INDEX: &str = "<h1>interop</h1>\n";
const MENU: &str = "caf\u{e9} cr\u{e8}me\n";

/// The source tree, under `<root>/src`, with explicit modes (no umask).
fn source_tree(root: &Path) -> PathBuf {
    let src = root.join("src");
    for dir in ["bin", "conf/app", "caf\u{e9}", "empty"] {
        fs::create_dir_all(src.join(dir)).expect("create source dir");
    }
    for (name, body, mode) in [
        ("bin/run.sh", RUN_SH, 0o755),
        ("conf/app/settings.ini", SETTINGS, 0o644),
        ("index.html", INDEX, 0o644),
        ("caf\u{e9}/men\u{fc}.txt", MENU, 0o644),
    ] {
        let path = src.join(name);
        fs::write(&path, body).expect("write source file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    symlink("bin/run.sh", src.join("start")).expect("symlink");
    src
}

/// The tree a release must hold: the source's, with `start` as the bytes it points to when the
/// producer follows symlinks.
fn expected(src: &Path, links_stored: bool) -> BTreeMap<String, Node> {
    let mut tree = tree(src);
    if !links_stored {
        tree.insert("start".into(), Node::File(RUN_SH.into(), 0o755));
    }
    tree
}

/// Deploy `archive` with the real binary and compare the release with `want`; then extract it
/// with `unzip` and compare that too (only the ASCII names with `ascii_for_unzip`).
#[track_caller]
fn assert_deploys(env: &Env, archive: &Path, want: &BTreeMap<String, Node>, ascii_for_unzip: bool) {
    let out = env.fetch(archive.to_str().expect("utf8 path"));
    assert_eq!(out.code(), Some(0), "deploy failed\n{}", out.dump());
    assert_tree(&env.live_release(), want);
    env.assert_clean();

    let unzipped = env.root.join("unzipped");
    fs::create_dir(&unzipped).expect("create unzip dir");
    // `-o`: no prompts. Exit 1 is unzip's "warning" (the backslash separators), not a failure.
    let status = Command::new(tool(&["unzip"], "unzip"))
        .args(["-q", "-o"])
        .arg(archive)
        .current_dir(&unzipped)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .status()
        .expect("run unzip");
    assert!(matches!(status.code(), Some(0 | 1)), "unzip: {status}");
    let ascii = |tree: &BTreeMap<String, Node>| {
        let keep = |name: &String| !ascii_for_unzip || name.is_ascii();
        let kept = tree.iter().filter(|(name, _)| keep(name));
        kept.map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        ascii(&tree(&unzipped)),
        ascii(want),
        "unzip extracts {} differently",
        archive.display()
    );
}

/// Archive the source tree with `producer` (run in `src`, writing `app.zip` beside it) and
/// deploy it.
#[track_caller]
fn check_producer(links_stored: bool, producer: impl FnOnce(&Path, &Path)) {
    let env = Env::new();
    let src = source_tree(&env.root);
    let archive = env.root.join("app.zip");
    producer(&src, &archive);
    assert_deploys(&env, &archive, &expected(&src, links_stored), false);
}

#[test]
fn info_zip_archive_deploys_as_the_source() {
    check_producer(true, |src, archive| {
        run(
            Command::new(tool(&["zip"], "zip"))
                .args(["-q", "-r", "-y"])
                .arg(archive)
                .arg("."),
            src,
        );
    });
}

#[test]
fn info_zip_streamed_archive_deploys_as_the_source() {
    // To a pipe, so zip cannot seek back: data descriptors after each entry. Without `-y`,
    // the symlink is followed.
    check_producer(false, |src, archive| {
        let bytes = run(
            Command::new(tool(&["zip"], "zip")).args(["-q", "-r", "-", "."]),
            src,
        );
        fs::write(archive, bytes).expect("write the streamed zip");
    });
}

/// Bug 8: bsdtar (and `tar -a` on macOS and the BSDs) writes a `./` root entry first and every
/// name with a `./` prefix; it was refused with `entry "./": invalid name: is empty`.
#[test]
fn bsdtar_archive_with_dot_slash_names_deploys_as_the_source() {
    check_producer(true, |src, archive| {
        let bsdtar = tool(&["bsdtar"], "libarchive-tools");
        run(
            Command::new(bsdtar)
                .args(["-a", "-cf"])
                .arg(archive)
                .arg("."),
            src,
        );
    });
}

#[test]
fn seven_zip_archive_deploys_as_the_source() {
    // `-snl`: store symlinks as links, as the other Unix producers do.
    check_producer(true, |src, archive| {
        let seven = tool(&["7zz", "7z"], "7zip");
        let args = ["a", "-tzip", "-snl", "-bd", "-bso0", "-bsp0"];
        run(Command::new(seven).args(args).arg(archive).arg("."), src);
    });
}

#[test]
fn python_zipfile_zip64_archive_deploys_as_the_source() {
    // Directories as entries, files deflated with ZIP64 local headers; symlinks followed, as
    // `ZipInfo.from_file` does.
    const SCRIPT: &str = r#"
import os, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(root, name)
            arc = os.path.relpath(path, src)
            if os.path.isdir(path):
                z.write(path, arc)
                continue
            info = zipfile.ZipInfo.from_file(path, arc)
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f, z.open(info, "w", force_zip64=True) as w:
                w.write(f.read())
"#;
    check_producer(false, |src, archive| {
        let python = tool(&["python3"], "python3");
        run(
            Command::new(python).args(["-c", SCRIPT, "."]).arg(archive),
            src,
        );
        let bytes = fs::read(archive).expect("read the python zip");
        assert!(
            contains_bytes(&bytes, &[0x01, 0x00, 0x10, 0x00]),
            "python wrote no ZIP64 extra field"
        );
    });
}

/// Bug 8: PowerShell 5.1's `Compress-Archive` (and older .NET) writes `\` separators with host
/// system MS-DOS and no Unix modes; unzip warns and extracts, we refused "contains a backslash".
#[test]
fn powershell_archive_with_backslash_separators_deploys() {
    let env = Env::new();
    // Host system 0 (MS-DOS), version 2.0; DOS attributes: 0x20 archive, 0x10 directory.
    let dos = |entry: RawEntry, attrs: u32| RawEntry {
        made_by: 0x0014,
        external_attrs: attrs,
        // Bit 11: the name is UTF-8, as .NET sets it for non-ASCII names.
        flags: 1 << 11,
        ..entry
    };
    let entries = [
        dos(RawEntry::deflated("bin\\run.sh", RUN_SH.as_bytes()), 0x20),
        dos(
            RawEntry::deflated("conf\\app\\settings.ini", SETTINGS.as_bytes()),
            0x20,
        ),
        dos(RawEntry::deflated("index.html", INDEX.as_bytes()), 0x20),
        dos(
            RawEntry::deflated("caf\u{e9}\\men\u{fc}.txt", MENU.as_bytes()),
            0x20,
        ),
        dos(RawEntry::stored("empty\\", b""), 0x10),
    ];
    let archive = env.root.join("app.zip");
    write_atomic(&archive, &raw_zip(&entries));
    // No Unix modes: files 0644 (the exec bit is lost, as with unzip), directories 0755.
    let want = expected_tree(&[
        file("bin/run.sh", RUN_SH, 0o644),
        file("conf/app/settings.ini", SETTINGS, 0o644),
        file("index.html", INDEX, 0o644),
        file("caf\u{e9}/men\u{fc}.txt", MENU, 0o644),
        dir("empty/", 0o755),
    ]);
    // Debian's unzip 6.0 reads the names of MS-DOS-made entries as code page 437 despite the
    // UTF-8 flag (`café` comes out garbled): it agrees with us on the ASCII names only.
    assert_deploys(&env, &archive, &want, true);
}
