//! A real browser for the status page tests: Debian's headless `chromium`, driven through the
//! Chrome DevTools Protocol over its websocket (`tungstenite`). The protocol part is a few
//! calls (navigate, evaluate, screenshot) and three event kinds (console errors, log errors,
//! requests), so it is written here rather than pulling a browser-automation framework and
//! its async runtime into the tests.
//!
//! Chromium runs as root in CI: `--no-sandbox`, its own profile in a temporary directory,
//! killed on drop. Every read has a timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// The chromium binary, or a panic naming the package.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: the status page tests need a real browser; install Debian's chromium \
         (apt-get install -y chromium; .ci/run does)",
        path.display()
    );
    path
}

/// A headless chromium, killed on drop.
pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().expect("chromium profile dir");
        let child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes its port to DevToolsActivePort in the profile once it listens.
        let file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// The first page target, attached, with console, log and network events on, at `url`.
    pub fn open(&self, url: &str) -> Page {
        let list = http_get(self.port, "/json/list");
        let targets: Value = serde_json::from_str(&list).expect("DevTools target list");
        let ws_url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools websocket");
        let mut page = Page {
            ws,
            next: 0,
            errors: Vec::new(),
            requests: Vec::new(),
        };
        for domain in ["Page", "Runtime", "Log", "Network"] {
            page.call(&format!("{domain}.enable"), json!({}));
        }
        page.call("Page.navigate", json!({ "url": url }));
        page.wait_for("the page loaded", "document.readyState === 'complete'");
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    // Read up to the length the headers announce (the server may keep the connection).
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                return body.to_owned();
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                return text
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_owned())
                    .unwrap_or_default();
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// One open page.
pub struct Page {
    ws: WebSocket<TcpStream>,
    next: u64,
    /// Console errors, uncaught exceptions and error log entries (a blocked load included).
    pub errors: Vec<String>,
    /// Every URL the page requested.
    pub requests: Vec<String>,
}

impl Page {
    /// Send a command and wait for its answer, recording the events that arrive meanwhile.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let text = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(text)).expect("send to DevTools");
        loop {
            let message = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("no answer to {method}: {e}"));
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if value["id"] == id {
                assert!(
                    value.get("error").is_none(),
                    "{method} failed: {}",
                    value["error"]
                );
                return value["result"].clone();
            }
            self.event(&value);
        }
    }

    fn event(&mut self, value: &Value) {
        let p = &value["params"];
        match value["method"].as_str().unwrap_or_default() {
            "Runtime.consoleAPICalled" if p["type"] == "error" => {
                self.errors.push(format!("console.error: {}", p["args"]));
            }
            "Runtime.exceptionThrown" => {
                self.errors
                    .push(format!("exception: {}", p["exceptionDetails"]));
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {}", p["entry"]["text"]));
            }
            "Network.requestWillBeSent" => {
                if let Some(url) = p["request"]["url"].as_str() {
                    self.requests.push(url.to_owned());
                }
            }
            _ => {}
        }
    }

    /// The value of a JavaScript expression.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Poll `expression` (every 100 ms, at most 30 s) until it is truthy; its value.
    #[track_caller]
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.eval(expression);
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The page's text.
    pub fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let data = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        std::fs::write(path, data).expect("write the screenshot");
    }

    /// Drain the events that arrived since the last call.
    pub fn settle(&mut self) {
        self.eval("1");
    }
}
