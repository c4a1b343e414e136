//! Hides secrets in the agent's own command line. A remote given with `-r
//! https://user:pass@host/…` would stay in `/proc/<pid>/cmdline`, which `ps` shows every local
//! user, for the whole life of a daemon. Once the arguments are parsed, each secret's bytes in
//! the process's argument area are overwritten with `*`. What `ps` could see between `exec` and
//! that moment cannot be taken back, so the README still recommends the configuration file.
//!
//! Written by hand: the crates that set a process title replace the whole command line, and
//! this only needs to blank a few bytes of it in place.

use std::fs;
use std::io;

/// Overwrite every occurrence of each secret (3 bytes or more) in this process's command line
/// with `*`; returns how many were hidden. Call after the arguments were parsed and before any
/// thread starts: `std::env::args()` reads the same bytes, and nothing may call it afterwards.
pub fn hide(secrets: &[String]) -> io::Result<usize> {
    let secrets: Vec<&[u8]> = secrets
        .iter()
        .map(|s| s.as_bytes())
        .filter(|s| s.len() >= 3)
        .collect();
    let cmdline = fs::read("/proc/self/cmdline")?;
    if !secrets.iter().any(|s| find(&cmdline, s).is_some()) {
        return Ok(0);
    }
    let (start, end) = argument_area()?;
    if end.checked_sub(start) != Some(cmdline.len()) {
        return Err(io::Error::other(
            "the argument area and /proc/self/cmdline differ in length",
        ));
    }
    // SAFETY: [start, end) is this process's argument area, as the kernel reports it: the
    // strings `exec` copied to the top of the main thread's stack, mapped read-write for the
    // life of the process. Its length was just checked against /proc/self/cmdline, which the
    // kernel reads from that very memory, and its bytes are compared below before anything is
    // written. No Rust reference points into it: std keeps raw `argv` pointers and reads
    // through them only in `env::args()`, which this process called once, to parse.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, cmdline.len()) };
    if area != cmdline.as_slice() {
        return Err(io::Error::other(
            "the argument area does not hold the command line",
        ));
    }
    let mut hidden = 0;
    for secret in secrets {
        while let Some(at) = find(area, secret) {
            area[at..at + secret.len()].fill(b'*');
            hidden += 1;
        }
    }
    Ok(hidden)
}

/// `arg_start` and `arg_end`, fields 48 and 49 of `/proc/self/stat` (Linux 3.5 and later).
fn argument_area() -> io::Result<(usize, usize)> {
    let stat = fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unexpected /proc/self/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> io::Result<usize> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no field {n} in /proc/self/stat")))
    };
    Ok((field(48)?, field(49)?))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_area_holds_this_process_command_line() {
        let (start, end) = argument_area().expect("arg_start and arg_end");
        let cmdline = fs::read("/proc/self/cmdline").expect("cmdline");
        assert_eq!(end - start, cmdline.len());
    }

    #[test]
    fn absent_and_short_secrets_change_nothing() {
        let before = fs::read("/proc/self/cmdline").expect("cmdline");
        let hidden = hide(&["not-in-the-command-line-8f2c".into(), "--".into()]);
        assert_eq!(hidden.expect("hide"), 0);
        assert_eq!(fs::read("/proc/self/cmdline").expect("cmdline"), before);
    }

    #[test]
    fn find_finds_the_first_occurrence() {
        assert_eq!(find(b"a:pass@host pass", b"pass"), Some(2));
        assert_eq!(find(b"abc", b"abcd"), None);
    }
}
