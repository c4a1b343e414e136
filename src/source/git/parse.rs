//! Parsing git's output: `ls-remote` listings, `ls-tree -z` records and `.gitmodules` (as
//! `git config -z --list` prints it). Pure functions of bytes, tested on bytes.

use std::collections::HashMap;

/// The commit a ref names on the remote, from `git ls-remote`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RemoteRef {
    /// What to fetch: `HEAD`, `refs/heads/…` or `refs/tags/…`.
    pub(super) name: String,
    /// The commit id (a tag peeled).
    pub(super) commit: String,
}

/// The patterns to ask `ls-remote` for, in order of preference: a branch before a tag (peeled
/// to its commit), a full `refs/…` name as given, or `HEAD`.
pub(super) fn ref_candidates(reference: Option<&str>) -> Vec<String> {
    match reference {
        None => vec!["HEAD".into()],
        Some(r) if r.starts_with("refs/") => vec![format!("{r}^{{}}"), r.to_string()],
        Some(r) => vec![
            format!("refs/heads/{r}"),
            format!("refs/tags/{r}^{{}}"),
            format!("refs/tags/{r}"),
        ],
    }
}

/// The first candidate that `ls-remote` listed, with its commit; a peeled tag (`^{}`) is
/// fetched by its tag name.
pub(super) fn pick_ref(listing: &str, candidates: &[String]) -> Option<RemoteRef> {
    let found: HashMap<&str, &str> = listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(id, name)| (name.trim(), id.trim()))
        .collect();
    candidates.iter().find_map(|name| {
        let id = found.get(name.as_str())?;
        let fetch = name.strip_suffix("^{}").unwrap_or(name);
        let valid = (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| RemoteRef {
            name: fetch.to_string(),
            commit: id.to_string(),
        })
    })
}

/// One line of `git ls-tree -l -z`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TreeEntry {
    pub(super) mode: String,
    /// `blob`, `tree` or `commit` (a submodule).
    pub(super) kind: String,
    pub(super) id: String,
    pub(super) size: Option<u64>,
    pub(super) path: String,
}

pub(super) fn parse_ls_tree(out: &[u8]) -> Vec<TreeEntry> {
    out.split(|&b| b == 0)
        .filter_map(|record| {
            let record = String::from_utf8_lossy(record);
            let (meta, path) = record.split_once('\t')?;
            let mut fields = meta.split_whitespace();
            let (mode, kind, id) = (fields.next()?, fields.next()?, fields.next()?);
            let size = fields.next().and_then(|s| s.parse().ok());
            Some(TreeEntry {
                mode: mode.into(),
                kind: kind.into(),
                id: id.into(),
                size,
                path: path.into(),
            })
        })
        .collect()
}

/// A submodule's settings from `.gitmodules`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Module {
    pub(super) url: String,
    pub(super) update_none: bool,
}

/// `git config -z --list` of a `.gitmodules`: path → module.
pub(super) fn parse_gitmodules(out: &[u8]) -> HashMap<String, Module> {
    let mut by_name: HashMap<String, (Option<String>, Module)> = HashMap::new();
    for record in out.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8_lossy(record);
        let (key, value) = record.split_once('\n').unwrap_or((&record, ""));
        let Some((name, var)) = key
            .strip_prefix("submodule.")
            .and_then(|k| k.rsplit_once('.'))
        else {
            continue;
        };
        let slot = by_name.entry(name.to_string()).or_default();
        match var {
            "path" => slot.0 = Some(value.trim_end_matches('/').to_string()),
            "url" => slot.1.url = value.to_string(),
            "update" => slot.1.update_none = value == "none",
            _ => {}
        }
    }
    by_name
        .into_values()
        .filter_map(|(path, module)| Some((path?, module)))
        .filter(|(_, m)| !m.url.is_empty())
        .collect()
}

pub(super) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_wins_over_a_tag_and_tags_are_peeled() {
        let listing = "1111111111111111111111111111111111111111\trefs/tags/v1\n\
                       2222222222222222222222222222222222222222\trefs/tags/v1^{}\n";
        let picked = pick_ref(listing, &ref_candidates(Some("v1"))).expect("tag");
        assert_eq!(
            picked,
            RemoteRef {
                name: "refs/tags/v1".into(),
                commit: "2".repeat(40)
            }
        );
        let both = format!("{listing}3333333333333333333333333333333333333333\trefs/heads/v1\n");
        assert_eq!(
            pick_ref(&both, &ref_candidates(Some("v1")))
                .expect("branch")
                .name,
            "refs/heads/v1"
        );
        let head = "4444444444444444444444444444444444444444\tHEAD\n";
        assert_eq!(
            pick_ref(head, &ref_candidates(None)).expect("HEAD").commit,
            "4".repeat(40)
        );
        assert_eq!(pick_ref(head, &ref_candidates(Some("main"))), None);
        assert_eq!(pick_ref("nothex\tHEAD\n", &ref_candidates(None)), None);
    }

    #[test]
    fn ls_tree_and_gitmodules_output_is_parsed() {
        let out = [
            "100644 blob aaaa      12\tsite/a b.txt",
            "160000 commit bbbb       -\tsite/lib",
            "040000 tree cccc       -\tsite",
        ]
        .join("\0");
        let out = out.as_bytes();
        let entries = parse_ls_tree(out);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            (entries[0].path.as_str(), entries[0].size),
            ("site/a b.txt", Some(12))
        );
        assert_eq!(
            (entries[1].kind.as_str(), entries[1].id.as_str()),
            ("commit", "bbbb")
        );
        let modules = parse_gitmodules(b"submodule.a.b.path\nsite/lib\0submodule.a.b.url\n../lib.git\0submodule.x.path\nx\0submodule.x.url\ny\0submodule.x.update\nnone\0");
        assert_eq!(
            modules.get("site/lib"),
            Some(&Module {
                url: "../lib.git".into(),
                update_none: false
            })
        );
        assert!(modules.get("x").is_some_and(|m| m.update_none));
    }
}
