//! The configuration file the Debian package ships (`contrib/deb/etc/repo-deploy/repo-deploy.cfg`)
//! lists every key the binary knows, commented out with its real default, so it cannot drift
//! from `config::KEYS` as keys are added. The package itself is built and installed by
//! `contrib/deb/test-package.sh` (from `.ci/run`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use repo_deploy::cli::Cli;
use repo_deploy::config::{self, Settings};

const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/deb/etc/repo-deploy/repo-deploy.cfg"
);

fn shipped() -> String {
    fs::read_to_string(SHIPPED).expect("read the shipped configuration file")
}

/// The commented-out settings: lines `#key = value` (prose comments start with `# `), as
/// (line number, key, value).
fn commented_settings(text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let rest = line.strip_prefix('#')?;
            let (key, value) = rest.split_once('=')?;
            let key = key.trim();
            let is_key = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            (is_key && !rest.starts_with(' '))
                .then(|| (i + 1, key.to_string(), value.trim().to_string()))
        })
        .collect()
}

#[test]
fn shipped_config_lists_every_key_once() {
    let text = shipped();
    let listed = commented_settings(&text);
    for (key, _aliases) in config::KEYS {
        let n = listed.iter().filter(|(_, k, _)| k == key).count();
        assert_eq!(
            n, 1,
            "{SHIPPED}: key `{key}` must appear exactly once as `#{key} = <default>` (found {n})"
        );
    }
}

#[test]
fn shipped_config_sets_nothing() {
    let text = shipped();
    let set = config::parse_file_text(Path::new(SHIPPED), &text).expect("the shipped file parses");
    assert!(
        set.is_empty(),
        "every key must be commented out, found {set:?}"
    );
}

#[test]
fn shipped_config_names_only_known_keys() {
    let text = shipped();
    for (line, key, value) in commented_settings(&text) {
        let uncommented = format!("{key} = {value}\n");
        let parsed =
            config::parse_file_text(Path::new(SHIPPED), &uncommented).unwrap_or_else(|e| {
                panic!("{SHIPPED}:{line}: `{key}` is not a key the binary knows: {e}")
            });
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            parsed[0].0, key,
            "{SHIPPED}:{line}: list the canonical name, not an alias"
        );
    }
}

/// Uncommenting every documented default changes nothing: the comments tell the truth.
#[test]
fn shipped_defaults_are_the_real_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join(name);
        fs::write(&path, text).expect("write");
        path
    };
    let uncommented: String = commented_settings(&shipped())
        .into_iter()
        .filter(|(_, _, value)| !value.is_empty())
        .map(|(_, key, value)| format!("{key} = {value}\n"))
        .collect();
    let defaults = write("defaults.cfg", &uncommented);
    let empty = write("empty.cfg", "");

    let describe = |config: PathBuf| -> String {
        let cli = Cli {
            config: Some(config),
            remote: Some("/srv/app.zip".into()),
            ..Cli::default()
        };
        let settings =
            Settings::resolve_in(&cli, &HashMap::new(), Path::new("/")).unwrap_or_else(|e| {
                panic!("the documented defaults must be valid: {e}\n{uncommented}")
            });
        // The file that was read is the only expected difference.
        settings
            .describe()
            .lines()
            .filter(|l| !l.starts_with("config"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        describe(defaults),
        describe(empty),
        "documented defaults differ from the real ones"
    );
}
