//! Full disk (issue #5, part 4): the deploy directory on a small tmpfs that the test mounts
//! (root only; skipped with a message otherwise). v1 fits; v2 does not — in the unpacking, in
//! the download, or for want of inodes. Each time: exit 1 with the reason, v1 still live and
//! intact, no staging, release or download left (the space is given back), and a version that
//! fits deploys at the next check.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::common::origin::Origin;
use crate::common::*;
use rand::{Rng, SeedableRng};

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut data[..]);
    data
}

/// v1: 1 MiB that does not compress, in a few files.
fn v1() -> Vec<Entry> {
    vec![
        file("version.txt", "v1\n", 0o644),
        file("bin/run.sh", "#!/bin/sh\necho v1\n", 0o755),
        file("data/a.bin", noise(512 * 1024, 1), 0o644),
        file("data/b.bin", noise(512 * 1024, 2), 0o644),
        link("run", "bin/run.sh"),
    ]
}

/// v3: small, fits anywhere.
fn v3() -> Vec<Entry> {
    vec![
        file("version.txt", "v3\n", 0o644),
        file("data/a.bin", noise(64 * 1024, 3), 0o644),
    ]
}

/// Free bytes and inodes of the filesystem holding `dir`.
fn free(dir: &Path) -> (u64, u64) {
    let path = CString::new(dir.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: statvfs(3) with a valid C string and a zeroed out-struct of the right type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", dir.display());
    (st.f_bavail * st.f_frsize, st.f_favail)
}

/// The test's world: a tmpfs with `options` as the deploy directory, v1 live from a local
/// ZIP outside it. `None` (after saying why) when no tmpfs can be mounted.
struct World {
    /// Declared before `env`, so it is unmounted before the temporary directory goes.
    mount: Tmpfs,
    env: Env,
    remote: String,
    v1: std::path::PathBuf,
}

impl World {
    fn new(options: &str) -> Option<World> {
        let env = Env::new();
        let mount = match Tmpfs::mount(&env.deploy, options) {
            Ok(m) => m,
            Err(why) => {
                eprintln!("skipped: the full-disk tests need a tmpfs: {why}");
                return None;
            }
        };
        let zip_path = env.root.join("app.zip");
        zip(&zip_path, &v1());
        let remote = zip_path.display().to_string();
        env.fetch(&remote).expect_code(0);
        let v1 = env.live_release();
        Some(World {
            mount,
            env,
            remote,
            v1,
        })
    }

    /// The run failed for want of space and left everything as it was.
    #[track_caller]
    fn failed_cleanly(&self, out: &Output, before: (u64, u64)) {
        out.expect_code(1);
        assert!(
            out.stderr.contains("No space left on device"),
            "the error names the full disk\n{}",
            out.dump()
        );
        assert_eq!(self.env.live_release(), self.v1, "v1 is still live");
        assert_tree(&self.v1, &expected_tree(&v1()));
        assert_eq!(
            self.env.releases(),
            vec![self.v1.clone()],
            "no other release"
        );
        self.env.assert_clean();
        let after = free(&self.mount.path);
        assert!(
            after.0 + 64 * 1024 >= before.0 && after.1 + 4 >= before.1,
            "the space is given back: free bytes/inodes {before:?} before, {after:?} after"
        );
    }

    /// A version that fits deploys at the next check.
    #[track_caller]
    fn recovers(&self) {
        zip(Path::new(&self.remote), &v3());
        self.env.fetch(&self.remote).expect_code(0);
        assert_tree(&self.env.live_release(), &expected_tree(&v3()));
        self.env.assert_clean();
    }
}

#[test]
fn unpacking_past_the_end_of_the_disk_fails_and_keeps_the_live_release() {
    let Some(w) = World::new("size=6m") else {
        return;
    };
    // 16 MiB of zeros: a ZIP of a few KiB that cannot be unpacked into 6 MiB.
    zip(
        Path::new(&w.remote),
        &[
            file("version.txt", "v2\n", 0o644),
            file("data/a.bin", noise(256 * 1024, 4), 0o644),
            file("data/zeros.bin", vec![0u8; 16 << 20], 0o644),
        ],
    );
    let before = free(&w.mount.path);

    let out = w.env.fetch(&w.remote);

    w.failed_cleanly(&out, before);
    assert!(out.stderr.contains("cannot unpack"), "{}", out.dump());
    w.recovers();
}

#[test]
fn download_past_the_end_of_the_disk_fails_and_removes_the_partial_download() {
    let Some(w) = World::new("size=6m") else {
        return;
    };
    // The download goes to the cache, on the tmpfs: 12 MiB cannot fit. (The bytes are not
    // even a ZIP: the download must fail before anything looks at them.)
    let origin = Origin::start();
    origin.publish("\"big\"", noise(12 << 20, 5));
    let before = free(&w.mount.path);

    let out = w.env.fetch(&origin.url("app.zip"));

    w.failed_cleanly(&out, before);
    assert!(out.stderr.contains("cannot write"), "{}", out.dump());
    // The next check over HTTP recovers too.
    origin.publish("\"v3\"", zip_bytes(&v3()));
    w.env.fetch(&origin.url("app.zip")).expect_code(0);
    assert_tree(&w.env.live_release(), &expected_tree(&v3()));
    w.env.assert_clean();
}

#[test]
fn running_out_of_inodes_fails_cleanly() {
    // Room for the bytes, not for the names: v1 takes about 20 inodes, v2 wants 300 more.
    let Some(w) = World::new("size=64m,nr_inodes=120") else {
        return;
    };
    let mut entries = vec![file("version.txt", "v2\n", 0o644)];
    for i in 0..300 {
        entries.push(file(&format!("many/f{i:03}.txt"), format!("{i}\n"), 0o644));
    }
    zip(Path::new(&w.remote), &entries);
    let before = free(&w.mount.path);

    let out = w.env.fetch(&w.remote);

    w.failed_cleanly(&out, before);
    w.recovers();
}
