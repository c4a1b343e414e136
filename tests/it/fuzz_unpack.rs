//! A fuzz driver for the unpacker that runs on the stable toolchain (issue 5, part 1): it
//! mutates a seed corpus of valid and hostile archives (bit flips, interesting bytes,
//! truncations, splices, insertions, deletions, edits of the length and offset fields of every
//! ZIP record) with a fixed-seed generator, unpacks each result with
//! `repo_deploy::unpack::unpack_zip`, and checks that it never panics, never hangs, and never
//! writes outside its destination, whatever it returns.
//!
//! `cargo test` runs 2,000 cases. Longer runs:
//! `REPO_DEPLOY_FUZZ_ITERS=1000000 REPO_DEPLOY_FUZZ_SECS=900 REPO_DEPLOY_FUZZ_SEED=7 cargo test
//! --release --test fuzz_unpack -- --nocapture` (stops at whichever limit comes first). A
//! failing input is saved under the system temp directory and named in the failure. The
//! coverage-guided target for `cargo fuzz` (nightly) is `fuzz/fuzz_targets/unpack.rs`;
//! `REPO_DEPLOY_FUZZ_SEEDS_OUT=fuzz/corpus/unpack` writes this seed corpus there for it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use repo_deploy::unpack::{Limits, unpack_zip};
use tokio_util::sync::CancellationToken;
use zip::write::SimpleFileOptions;

const LIMITS: Limits = Limits {
    max_bytes: HOSTILE_MAX_SIZE,
    max_entries: HOSTILE_MAX_FILES,
};
/// One unpack taking longer than this is a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

/// SplitMix64: small, fast, and the same sequence on every platform and version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value}: expected a whole number")),
    )
}

/// Valid archives of every shape the unpacker handles, and the hostile corpus.
fn seeds(root: &Path) -> Vec<Vec<u8>> {
    let mut seeds = vec![
        zip_bytes(&[
            file("version.txt", "v1\n", 0o644),
            file("bin/run.sh", "#!/bin/sh\necho hi\n", 0o755),
            dir("empty/", 0o700),
            link("bin/link", "../version.txt"),
            file("deep/a/b/c/d.txt", "deep", 0o600),
        ]),
        raw_zip(&[
            RawEntry::stored("a.txt", b"stored"),
            RawEntry::deflated("b.txt", &b"deflated text ".repeat(300)),
            RawEntry {
                zip64: true,
                ..RawEntry::deflated("c/zip64.bin", &[9u8; 5000])
            },
        ]),
        raw_zip_with(
            &[RawEntry::stored("z.txt", b"zip64 end record")],
            RawEnd {
                zip64: true,
                ..RawEnd::default()
            },
        ),
        zip_bytes(&[]),
        // As bsdtar writes them: a `./` root entry, then `./` prefixes (issue 11).
        zip_bytes(&[
            dir("./", 0o755),
            file("./a.txt", "a", 0o644),
            dir("./sub/", 0o755),
            file("./sub/b.txt", "b", 0o644),
        ]),
        // As PowerShell 5.1 writes them: `\` separators, host MS-DOS (issue 11).
        raw_zip(
            &[
                (&b"dir\\file.txt"[..], 0x20),
                (b"dir\\sub\\deflated.txt", 0x20),
                (b"empty\\", 0x10),
            ]
            .map(|(name, attrs)| RawEntry {
                made_by: 0x0014,
                external_attrs: attrs,
                ..RawEntry::deflated(name, b"from windows")
            }),
        ),
    ];
    // The zip crate's own encodings: extended timestamps, ZIP64 headers, DOS attributes.
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .with_extended_timestamp(Some(1_600_000_000), None, None)
        .expect("timestamp");
    w.add_directory("dir/", opts.clone()).expect("dir");
    w.start_file("dir/ts.txt", opts.clone()).expect("file");
    w.write_all(b"timestamped").expect("write");
    w.start_file("big.bin", opts.clone().large_file(true))
        .expect("file");
    w.write_all(&[1u8; 3000]).expect("write");
    w.start_file("dos.txt", opts.clone().system(zip::System::Dos))
        .expect("file");
    w.write_all(b"dos").expect("write");
    w.add_symlink("ln", "dir/ts.txt", opts).expect("symlink");
    seeds.push(w.finish().expect("finish").into_inner());
    seeds.extend(hostile_cases(root).into_iter().map(|c| c.bytes));
    seeds
}

/// Offsets of the integer fields of each ZIP record, by signature: the places where a lie
/// changes how the rest is read.
fn record_fields(sig: [u8; 4]) -> &'static [(usize, usize)] {
    match sig {
        // Local header: flags, method, crc, sizes, name and extra lengths.
        [b'P', b'K', 3, 4] => &[(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
        // Central header: made-by, flags, method, crc, sizes, lengths, attributes, offset.
        [b'P', b'K', 1, 2] => &[
            (4, 2),
            (8, 2),
            (10, 2),
            (16, 4),
            (20, 4),
            (24, 4),
            (28, 2),
            (30, 2),
            (32, 2),
            (38, 4),
            (42, 4),
        ],
        // End record: counts, directory size and offset, comment length.
        [b'P', b'K', 5, 6] => &[(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
        // ZIP64 end record and locator.
        [b'P', b'K', 6, 6] => &[(4, 8), (24, 8), (32, 8), (40, 8), (48, 8)],
        [b'P', b'K', 6, 7] => &[(8, 8), (16, 4)],
        // ZIP64 extra field: its length and the sizes it holds.
        [1, 0, _, _] => &[(2, 2), (4, 8), (12, 8)],
        _ => &[],
    }
}

const TOKENS: &[&[u8]] = &[
    b"../",
    b"/",
    b"\\",
    b"C:",
    b"\xff",
    b"\0",
    b".",
    b"//",
    b"PK\x01\x02",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\xff\xff\xff\xff",
];

/// Apply one to four mutations; returns their names, for the report.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) -> Vec<&'static str> {
    let mut done = Vec::new();
    for _ in 0..=rng.below(4) {
        let len = input.len();
        let what = match rng.below(10) {
            0 | 1 if len > 0 => {
                for _ in 0..=rng.below(8) {
                    let at = rng.below(len);
                    input[at] ^= 1 << rng.below(8);
                }
                "bit flips"
            }
            2 if len > 0 => {
                let at = rng.below(len);
                input[at] = [0, 1, 0x7f, 0x80, 0xff, b'/', b'.'][rng.below(7)];
                "interesting byte"
            }
            3 if len > 0 => {
                input.truncate(rng.below(len));
                "truncation"
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
                "splice"
            }
            5 | 6 => {
                let records: Vec<(usize, &[(usize, usize)])> = (0..len.saturating_sub(3))
                    .filter_map(|o| {
                        let sig = [input[o], input[o + 1], input[o + 2], input[o + 3]];
                        let fields = record_fields(sig);
                        (!fields.is_empty()).then_some((o, fields))
                    })
                    .collect();
                if records.is_empty() {
                    continue;
                }
                let (at, fields) = records[rng.below(records.len())];
                let (offset, width) = fields[rng.below(fields.len())];
                if at + offset + width > len {
                    continue;
                }
                let field = &mut input[at + offset..at + offset + width];
                let mut old = [0u8; 8];
                old[..width].copy_from_slice(field);
                let old = u64::from_le_bytes(old);
                let max = if width == 8 {
                    u64::MAX
                } else {
                    (1u64 << (width * 8)) - 1
                };
                let value = match rng.below(7) {
                    0 => 0,
                    1 => max,
                    2 => old.wrapping_add(1),
                    3 => old.wrapping_sub(1),
                    4 => old.wrapping_add(1 + rng.below(64) as u64),
                    5 => len as u64,
                    _ => rng.next(),
                } & max;
                field.copy_from_slice(&value.to_le_bytes()[..width]);
                "length field"
            }
            7 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                if rng.chance(2) && at + token.len() <= len {
                    input[at..at + token.len()].copy_from_slice(token);
                } else {
                    input.splice(at..at, token.iter().copied());
                }
                "token"
            }
            8 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                input.drain(at..at + n);
                "deletion"
            }
            9 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(256));
                let chunk = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, chunk);
                "duplicated range"
            }
            _ => continue,
        };
        done.push(what);
    }
    done
}

/// Where a case runs: the layout of a real deploy directory, with a canary beside it.
struct Arena {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    canary: BTreeMap<String, Node>,
}

impl Arena {
    fn new() -> Arena {
        let tmp = tempfile::Builder::new()
            .prefix("repo-deploy-fuzz-")
            .tempdir()
            .expect("tempdir");
        let root = fs::canonicalize(tmp.path()).expect("canonicalize");
        fs::create_dir_all(root.join("canary")).expect("canary");
        fs::write(root.join("canary/canary.txt"), "untouched\n").expect("canary file");
        fs::create_dir_all(root.join("deploy/releases")).expect("releases");
        fs::create_dir_all(root.join("deploy/cache")).expect("cache");
        let canary = tree(&root.join("canary"));
        Arena {
            _tmp: tmp,
            root,
            canary,
        }
    }

    fn archive(&self) -> PathBuf {
        self.root.join("deploy/cache/input.zip")
    }

    fn dest(&self) -> PathBuf {
        self.root.join("deploy/releases/.staging-fuzz")
    }

    /// Empty the destination, read-only directories included.
    fn reset(&self) {
        let dest = self.dest();
        if fs::symlink_metadata(&dest).is_ok() {
            make_writable(&dest);
            fs::remove_dir_all(&dest).expect("remove dest");
        }
        fs::create_dir(&dest).expect("create dest");
    }

    /// Everything the unpacker may not do, checked after every case. Returns what went wrong.
    fn violations(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let names = |dir: &Path| -> Vec<String> {
            list(dir)
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        let root = &self.root;
        for (dir, expected) in [
            (root.clone(), vec!["canary", "deploy"]),
            (root.join("deploy"), vec!["cache", "releases"]),
            (root.join("deploy/releases"), vec![".staging-fuzz"]),
            (root.join("deploy/cache"), vec!["input.zip"]),
        ] {
            let found = names(&dir);
            if found != expected {
                bad.push(format!("{} holds {found:?}", dir.display()));
            }
        }
        if tree(&root.join("canary")) != self.canary {
            bad.push("the canary directory changed".into());
        }
        let dest = self.dest();
        let (mut bytes, mut entries) = (0, 0);
        let mut stack = vec![dest.clone()];
        while let Some(dir) = stack.pop() {
            for path in list(&dir) {
                entries += 1;
                let meta = fs::symlink_metadata(&path).expect("lstat");
                let rel = path.strip_prefix(&dest).expect("under dest").to_path_buf();
                let kind = meta.file_type();
                if meta.mode() & 0o7000 != 0 {
                    bad.push(format!("{rel:?} has mode {:o}", meta.mode()));
                }
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    bytes += meta.len();
                } else if kind.is_symlink() {
                    let target = fs::read_link(&path).expect("readlink");
                    if !stays_inside(&rel, &target) {
                        bad.push(format!("symlink {rel:?} -> {target:?} leaves the release"));
                    }
                    if let Ok(real) = fs::canonicalize(&path)
                        && !real.starts_with(&dest)
                    {
                        bad.push(format!("symlink {rel:?} resolves to {}", real.display()));
                    }
                } else {
                    bad.push(format!("{rel:?} is a special file"));
                }
            }
        }
        if bytes > LIMITS.max_bytes {
            bad.push(format!("{bytes} bytes written, over max-size"));
        }
        if entries > LIMITS.max_entries {
            bad.push(format!("{entries} entries written, over max-files"));
        }
        bad
    }
}

fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for path in list(dir) {
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            make_writable(&path);
        }
    }
}

/// Whether a symlink at `link` (relative to the release) with `target` resolves, lexically,
/// inside the release.
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = link.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[test]
fn unpacking_mutated_archives_never_panics_hangs_or_escapes() {
    let iterations = env_number("REPO_DEPLOY_FUZZ_ITERS").unwrap_or(2_000);
    let budget = env_number("REPO_DEPLOY_FUZZ_SECS").map(Duration::from_secs);
    let seed = env_number("REPO_DEPLOY_FUZZ_SEED").unwrap_or(0x5eed);
    let arena = Arena::new();
    let seeds = seeds(&arena.root);
    // A seed corpus for `cargo fuzz`: `REPO_DEPLOY_FUZZ_SEEDS_OUT=fuzz/corpus/unpack`.
    if let Some(dir) = std::env::var_os("REPO_DEPLOY_FUZZ_SEEDS_OUT") {
        fs::create_dir_all(&dir).expect("create the seed directory");
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(Path::new(&dir).join(format!("seed-{i:03}.zip")), seed).expect("write seed");
        }
    }
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut ran = 0;
    for iteration in 0..iterations {
        if budget.is_some_and(|b| started.elapsed() >= b) {
            break;
        }
        let mut input = seeds[rng.below(seeds.len())].clone();
        let mutations = mutate(&mut rng, &mut input, &seeds);
        arena.reset();
        fs::write(arena.archive(), &input).expect("write input");

        let (archive, dest) = (arena.archive(), arena.dest());
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            let result = unpack_zip(&archive, &dest, &LIMITS, &CancellationToken::new());
            // Display must work for every error, and say something.
            let shown = result.as_ref().err().map(ToString::to_string);
            let _ = tx.send((result, shown));
        });
        let fail = |why: String| -> ! {
            let saved = std::env::temp_dir().join(format!(
                "repo-deploy-fuzz-failure-seed{seed}-case{iteration}.zip"
            ));
            let _ = fs::write(&saved, &input);
            panic!(
                "case {iteration} (seed {seed}, mutations {mutations:?}): {why}; input saved to {}",
                saved.display()
            );
        };
        let (result, shown) = match rx.recv_timeout(CASE_TIMEOUT) {
            Ok(done) => done,
            Err(mpsc::RecvTimeoutError::Timeout) => fail(format!("hung for {CASE_TIMEOUT:?}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let panic = worker
                    .join()
                    .expect_err("the worker died without answering");
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                fail(format!("panicked: {message}"))
            }
        };
        worker.join().expect("worker");
        if shown.as_deref().is_some_and(str::is_empty) {
            fail("an error with an empty message".into());
        }
        let violations = arena.violations();
        if !violations.is_empty() {
            fail(format!("{result:?}: {}", violations.join("; ")));
        }
        if let Ok(summary) = &result
            && (summary.bytes > LIMITS.max_bytes
                || summary.files + summary.dirs + summary.symlinks > LIMITS.max_entries)
        {
            fail(format!("{summary:?} is over the limits"));
        }
        let outcome = match &result {
            Ok(_) => "Ok".to_string(),
            Err(e) => format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        *outcomes.entry(outcome).or_default() += 1;
        ran += 1;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz_unpack: {ran} cases from {} seeds in {:.1}s (seed {seed}): {outcomes:?}",
        seeds.len(),
        elapsed.as_secs_f64()
    );
    assert!(ran > 0, "no case ran");
    assert!(
        ran < 500 || (outcomes.get("Ok").copied().unwrap_or(0) > 0 && outcomes.len() > 5),
        "the mutations should reach both successes and many kinds of errors: {outcomes:?}"
    );
}
