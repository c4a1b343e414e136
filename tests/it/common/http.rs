//! One HTTP/1.1 request to a daemon's listener, read to the end: the tests of `/metrics`,
//! `/healthz`, `/trigger` and the status page speak HTTP with nothing between them and the
//! bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{Daemon, WAIT, eventually};

/// One HTTP exchange.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Send one HTTP/1.1 request to the daemon and read the whole reply.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the listener");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send the request");
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("read the reply");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP reply: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// The port the daemon logged it listens on.
pub fn listener_port(d: &Daemon) -> u16 {
    let mut port = None;
    let found = eventually(WAIT, || {
        port = d
            .stderr()
            .split("on http://127.0.0.1:")
            .nth(1)
            .and_then(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            });
        port.is_some()
    });
    assert!(found, "no listener address logged:\n{}", d.stderr());
    port.expect("port")
}
