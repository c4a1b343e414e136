//! Logging to standard error, one line per event, and the one place where secrets are masked.
//!
//! Every secret the configuration holds (URL credentials, S3 keys) is registered here at
//! start-up; the writer behind `tracing` replaces each occurrence with `***`, so even a
//! library's error message that echoes a URL cannot leak one. `main` prints its final error
//! through [`mask`] too.

use std::io::{self, Write};
use std::sync::{OnceLock, RwLock};

use tracing_subscriber::fmt::MakeWriter;

static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();

fn secrets() -> &'static RwLock<Vec<String>> {
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Remember a secret so that it is masked wherever it would be printed.
pub fn register_secret(secret: &str) {
    if secret.len() < 3 {
        return; // masking "a" everywhere would garble every line and protect nothing
    }
    // In a JSON log line a secret with `"` or `\` in it appears escaped: mask that form too.
    let escaped = serde_json::to_string(secret)
        .ok()
        .map(|q| q[1..q.len() - 1].to_string());
    if let Ok(mut list) = secrets().write() {
        for form in std::iter::once(secret.to_string()).chain(escaped) {
            if !list.contains(&form) {
                list.push(form);
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Replace every registered secret in `text` with `***`.
pub fn mask(text: &str) -> String {
    let Ok(list) = secrets().read() else {
        return text.to_string();
    };
    let mut out = text.to_string();
    for secret in list.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// Set up `tracing`: our events at info (debug with `-v`); libraries' only when they are
/// errors (warnings with `-v`), since their warnings are about fallbacks we already handle
/// (such as the AWS SDK probing the instance metadata service off EC2). Events go to stderr
/// through the masking writer.
pub fn init(verbose: bool) {
    init_with_format(verbose, false);
}

/// As [`init`]; with `json`, each event is one JSON object on one line (`timestamp`, `level`,
/// `message`, the event's other fields, `target`) for log shippers, masked like the rest.
pub fn init_with_format(verbose: bool, json: bool) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let (ours, theirs) = if verbose {
        (LevelFilter::DEBUG, LevelFilter::WARN)
    } else {
        (LevelFilter::INFO, LevelFilter::ERROR)
    };
    let ansi = rustix::termios::isatty(std::io::stderr());
    let filter = Targets::new()
        .with_target("repo_deploy", ours)
        .with_default(theirs);
    let human = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(MaskingStderr)
            .with_target(verbose)
            .with_ansi(ansi)
    });
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(MaskingStderr)
    });
    let _ = tracing_subscriber::registry()
        .with(human)
        .with(json)
        .with(filter)
        .try_init();
}

/// A `MakeWriter` whose writers buffer one event and mask it before it reaches stderr.
struct MaskingStderr;

impl<'a> MakeWriter<'a> for MaskingStderr {
    type Writer = MaskingLine;
    fn make_writer(&'a self) -> Self::Writer {
        MaskingLine(Vec::with_capacity(256))
    }
}

/// One event's bytes; written to stderr, masked, when dropped.
struct MaskingLine(Vec<u8>);

impl Write for MaskingLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskingLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let _ = io::stderr().lock().write_all(mask(&text).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_masked() {
        register_secret("hunter2-secret");
        register_secret("hunter2");
        let line = mask("GET https://u:hunter2-secret@h/ failed; pass hunter2");
        assert_eq!(line, "GET https://u:***@h/ failed; pass ***");
    }

    #[test]
    fn json_escaped_secrets_are_masked() {
        register_secret(r#"pa"ss\word"#);
        let line = serde_json::json!({ "message": r#"login with pa"ss\word failed"# }).to_string();
        assert_eq!(mask(&line), r#"{"message":"login with *** failed"}"#);
    }

    #[test]
    fn short_strings_are_not_registered() {
        register_secret("ab");
        assert_eq!(mask("abcab"), "abcab");
    }
}
