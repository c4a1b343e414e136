//! An HTTP origin on 127.0.0.1 that serves one ZIP (`200` with `Content-Length` and `ETag`,
//! `304` to a matching `If-None-Match`) and can be told to misbehave. One thread per
//! connection, `Connection: close` on every answer; it stops (and lets every held connection
//! go) when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How the origin answers from now on.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The published body, in `chunk`-byte writes with `pause` between them (a slow but
    /// steady server when `pause` is not zero).
    Serve { chunk: usize, pause: Duration },
    /// These bytes as they are (status line, headers, maybe a body), then `End`.
    Raw(Vec<u8>, End),
}

/// How a [`Answer::Raw`] ends its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A normal close (FIN).
    Close,
    /// A connection reset (RST: `SO_LINGER` 0, then close).
    Reset,
    /// Keep the connection open and silent until the origin is dropped.
    Stall,
}

impl Answer {
    /// The published body at full speed.
    pub fn serve() -> Answer {
        Answer::Serve {
            chunk: 64 * 1024,
            pause: Duration::ZERO,
        }
    }
}

struct Shared {
    etag: String,
    body: Arc<Vec<u8>>,
    answer: Answer,
    heads: Vec<(Instant, String)>,
}

pub struct Origin {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    /// Body bytes written to clients so far.
    sent: Arc<AtomicU64>,
    /// Connections being answered right now.
    busy: Arc<AtomicUsize>,
}

impl Origin {
    /// Start with nothing published (an empty body under ETag `"0"`), answering normally.
    pub fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let origin = Origin {
            port,
            shared: Arc::new(Mutex::new(Shared {
                etag: "\"0\"".into(),
                body: Arc::new(Vec::new()),
                answer: Answer::serve(),
                heads: Vec::new(),
            })),
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            busy: Arc::new(AtomicUsize::new(0)),
        };
        let (shared, stop, sent, busy) = (
            Arc::clone(&origin.shared),
            Arc::clone(&origin.stop),
            Arc::clone(&origin.sent),
            Arc::clone(&origin.busy),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (shared, stop, sent, busy) = (
                            Arc::clone(&shared),
                            Arc::clone(&stop),
                            Arc::clone(&sent),
                            Arc::clone(&busy),
                        );
                        busy.fetch_add(1, Ordering::SeqCst);
                        thread::spawn(move || {
                            answer(stream, &shared, &stop, &sent);
                            busy.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        origin
    }

    /// `http://127.0.0.1:PORT/<path>` (any path gets the same answer).
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Serve `body` under `etag` (give the quotes: `"\"v2\""`).
    pub fn publish(&self, etag: &str, body: Vec<u8>) {
        let mut s = self.shared.lock().expect("origin");
        s.etag = etag.to_string();
        s.body = Arc::new(body);
    }

    /// Answer the next requests this way.
    pub fn answer(&self, answer: Answer) {
        self.shared.lock().expect("origin").answer = answer;
    }

    /// The request heads received so far.
    pub fn requests(&self) -> Vec<String> {
        let s = self.shared.lock().expect("origin");
        s.heads.iter().map(|(_, h)| h.clone()).collect()
    }

    /// When the requests so far arrived (their heads were read).
    pub fn request_times(&self) -> Vec<Instant> {
        let s = self.shared.lock().expect("origin");
        s.heads.iter().map(|(t, _)| *t).collect()
    }

    /// Body bytes written to clients so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Connections being answered right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(mut stream: TcpStream, shared: &Mutex<Shared>, stop: &AtomicBool, sent: &AtomicU64) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let (etag, body, how) = {
        let mut s = shared.lock().expect("origin");
        s.heads.push((Instant::now(), head.clone()));
        (s.etag.clone(), Arc::clone(&s.body), s.answer.clone())
    };
    match how {
        Answer::Serve { chunk, pause } => {
            let inm = head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("if-none-match")
                    .then(|| v.trim().to_string())
            });
            if inm.as_deref() == Some(etag.as_str()) {
                let _ = stream.write_all(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
                return;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            for (i, part) in body.chunks(chunk.max(1)).enumerate() {
                if i > 0 && !pause.is_zero() {
                    thread::sleep(pause);
                }
                if stop.load(Ordering::Relaxed) || stream.write_all(part).is_err() {
                    return;
                }
                sent.fetch_add(part.len() as u64, Ordering::SeqCst);
            }
        }
        Answer::Raw(bytes, end) => {
            let _ = stream.write_all(&bytes);
            let _ = stream.flush();
            match end {
                End::Close => {}
                End::Reset => {
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: setsockopt on a socket we own, with a correctly sized value.
                    unsafe {
                        libc::setsockopt(
                            stream.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&raw const linger).cast(),
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                }
                End::Stall => {
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }
}
