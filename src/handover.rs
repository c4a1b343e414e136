//! The rollback hand-over: how `repo-deploy rollback` asks the daemon that holds the deploy
//! lock to roll back for it, over a Unix socket, `${directory}/.control.sock`.
//!
//! Why a socket and not a signal to the pid in the lock file (issue 11, bug 4): only a daemon
//! listens on it, so a request can never reach (and kill) a one-shot `-f` run or another
//! `rollback` that holds the lock; they have no listener, the requester's `connect` fails at
//! once, and it exits 5.
//!
//! Invariants:
//! - Only the holder of the deploy lock creates or removes the socket ([`ControlSocket::bind`]
//!   takes the lock as proof), so it owns the name: a socket left by a `kill -9`ed daemon is
//!   replaced by the next daemon and swept by any other run ([`sweep`]).
//! - The socket is bound in a private (0700) temporary directory, made 0600, and only then
//!   renamed into place: no other user can connect at any moment.
//! - One request per connection, one JSON line each way, at most [`MAX_LINE`] bytes, read
//!   with a timeout by a task of its own: a slow, silent or hostile client never holds up the
//!   daemon, which only ever sees complete requests ([`Incoming`]) on a queue.
//! - The requester keeps the connection open until it has the answer; closing it withdraws a
//!   request that has not started yet ([`Incoming::is_withdrawn`]).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::exit::Exit;
use crate::fsutil;
use crate::lock::DeployLock;

/// The socket's name in the deploy directory.
pub const SOCKET: &str = ".control.sock";

/// The longest request or answer line, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// How long a client has to send its request once connected.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; more are closed at once (the requester sees no answer).
const CONNECTIONS: usize = 8;

/// Requests waiting for the daemon's loop (a check may be running).
const QUEUE: usize = 4;

/// Where the control socket of `directory` lives.
pub fn socket_path(directory: &Path) -> PathBuf {
    directory.join(SOCKET)
}

/// What a requester asks, as one JSON line: `{"rollback": {"to": null}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub rollback: Rollback,
}

/// The arguments of `repo-deploy rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// A release name or a prefix of its version; `None`: the release before the live one.
    #[serde(default)]
    pub to: Option<String>,
}

/// The daemon's answer, as one JSON line: the exit status the requester should end with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub exit: i32,
    pub message: String,
}

impl Answer {
    pub fn new(exit: Exit, message: String) -> Answer {
        Answer {
            exit: exit.code(),
            message,
        }
    }

    /// The exit status it names (an unknown one is a failure).
    pub fn exit(&self) -> Exit {
        Exit::from_code(self.exit).unwrap_or(Exit::Failed)
    }
}

/// A complete request, handed to the daemon's loop, and where its answer goes.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request,
    reply: oneshot::Sender<Answer>,
}

impl Incoming {
    /// The requester closed the connection (it gave up waiting, or was killed): do not run it.
    pub fn is_withdrawn(&self) -> bool {
        self.reply.is_closed()
    }

    /// Send the answer (lost if the requester has gone meanwhile).
    pub fn answer(self, answer: Answer) {
        let _ = self.reply.send(answer);
    }
}

/// The daemon's end: listening while it lives, the socket file removed when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    requests: mpsc::Receiver<Incoming>,
    acceptor: JoinHandle<()>,
}

impl ControlSocket {
    /// Listen on `${directory}/.control.sock`, replacing one left by a killed daemon. `_lock`
    /// is the deploy lock of `directory`: holding it makes the name ours. Must be called
    /// within a tokio runtime.
    pub fn bind(directory: &Path, _lock: &DeployLock) -> io::Result<ControlSocket> {
        let path = socket_path(directory);
        sweep_temporaries(directory)?;
        let private = fsutil::temp_sibling(&path);
        std::fs::create_dir(&private)?;
        let bound = (|| -> io::Result<UnixListener> {
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
            let inner = private.join("sock");
            let (address, _dir) = addressable(&inner)?;
            let listener = std::os::unix::net::UnixListener::bind(&address)?;
            std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
            listener.set_nonblocking(true)?;
            let listener = UnixListener::from_std(listener)?;
            // Over a stale socket, if any: clients see the old (refusing) one or this one.
            std::fs::rename(&inner, &path)?;
            Ok(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let listener = bound?;
        let (sender, requests) = mpsc::channel(QUEUE);
        let acceptor = tokio::spawn(accept(listener, sender));
        Ok(ControlSocket {
            path,
            requests,
            acceptor,
        })
    }

    /// Where it listens.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next complete request (cancel-safe: use it in `select!`).
    pub async fn next(&mut self) -> Option<Incoming> {
        self.requests.recv().await
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.acceptor.abort();
        if let Err(e) = fsutil::not_found_is_ok(std::fs::remove_file(&self.path)) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Remove the control socket and the temporaries a killed daemon left in `directory`. Call
/// only while holding its deploy lock.
pub fn sweep(directory: &Path) -> io::Result<()> {
    sweep_temporaries(directory)?;
    fsutil::not_found_is_ok(std::fs::remove_file(socket_path(directory)))
}

fn sweep_temporaries(directory: &Path) -> io::Result<()> {
    for entry in fsutil::not_found_is_none(std::fs::read_dir(directory))?
        .into_iter()
        .flatten()
    {
        let entry = entry?;
        if fsutil::is_temp_of(&entry.file_name().to_string_lossy(), SOCKET) {
            fsutil::not_found_is_ok(std::fs::remove_dir_all(entry.path()))?;
        }
    }
    Ok(())
}

/// The longest path `bind(2)` and `connect(2)` take (`sun_path` is 108 bytes, NUL included).
const SUN_PATH_MAX: usize = 107;

/// A name by which `path` can be bound or reached: itself, or, when it is too long for a
/// socket address (a deep deploy directory), `/proc/self/fd/N/NAME` through its directory,
/// opened and returned to be kept open until the call is made.
fn addressable(path: &Path) -> io::Result<(PathBuf, Option<std::fs::File>)> {
    use std::os::fd::AsRawFd;
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((path.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok((path.to_path_buf(), None));
    };
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    Ok((short, Some(dir)))
}

async fn accept(listener: UnixListener, sender: mpsc::Sender<Incoming>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: do not spin; the next accept may succeed.
                tracing::warn!("control socket: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                "control socket: {CONNECTIONS} connections already open; closing a new one"
            );
            continue;
        };
        let sender = sender.clone();
        tokio::spawn(async move {
            serve(stream, sender).await;
            drop(slot);
        });
    }
}

/// One connection: read one request, queue it, write its answer.
async fn serve(stream: UnixStream, sender: mpsc::Sender<Incoming>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let answer = match timeout(READ_TIMEOUT, read_line(&mut reader)).await {
        Err(_) => Answer::new(
            Exit::Usage,
            format!("no request within {}s", READ_TIMEOUT.as_secs()),
        ),
        Ok(Err(e)) => Answer::new(Exit::Usage, format!("cannot read the request: {e}")),
        Ok(Ok(line)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Answer::new(
                Exit::Usage,
                format!(
                    "not a request ({e}); expected one line such as {{\"rollback\": {{\"to\": null}}}}"
                ),
            ),
            Ok(request) => {
                tracing::info!(
                    "control socket: rollback requested{}; it runs when no check is running",
                    request
                        .rollback
                        .to
                        .as_deref()
                        .map(|t| format!(" to {t}"))
                        .unwrap_or_default()
                );
                let (reply, answered) = oneshot::channel();
                let queued = async {
                    sender.send(Incoming { request, reply }).await.ok()?;
                    answered.await.ok()
                };
                tokio::select! {
                    answer = queued => answer.unwrap_or_else(|| Answer::new(
                        Exit::Failed,
                        "the agent stopped or moved to another directory before it served the request; see its log".into(),
                    )),
                    // The requester left: dropping `answered` withdraws the request.
                    () = closed(&mut reader) => return,
                }
            }
        },
    };
    let mut line = serde_json::to_vec(&answer).unwrap_or_default();
    line.push(b'\n');
    if let Ok(Err(e)) | Err(e) = timeout(WRITE_TIMEOUT, write.write_all(&line))
        .await
        .map_err(io::Error::other)
    {
        tracing::warn!("control socket: cannot send the answer: {e}");
    }
}

/// Read one line of at most [`MAX_LINE`] bytes, without its newline.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if line.pop() != Some(b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no complete line within {MAX_LINE} bytes"),
        ));
    }
    Ok(line)
}

/// Resolves when the peer closes its end (or sends more than its one request).
async fn closed<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) {
    let mut byte = [0u8; 1];
    let _ = reader.read(&mut byte).await;
}

/// Why a request could not be handed over.
#[derive(Debug, Error)]
pub enum AskError {
    /// Nothing listens: the lock holder is a one-shot run or another `rollback`, or a daemon
    /// that has not bound its socket yet.
    #[error("nothing listens on {0}: {1}")]
    NoListener(PathBuf, io::Error),
    #[error("cannot reach the agent at {0}: {1}")]
    Connect(PathBuf, io::Error),
    #[error(
        "the agent did not answer within {}s (a long check before the rollback, or slow hooks); the request is withdrawn unless it had started: see the agent's log",
        .0.as_secs()
    )]
    Timeout(Duration),
    #[error("the conversation with the agent at {0} failed: {1}")]
    Io(PathBuf, io::Error),
}

/// Send `request` to the daemon of `directory` and wait up to `wait` for its answer.
pub async fn ask(directory: &Path, request: &Request, wait: Duration) -> Result<Answer, AskError> {
    let path = socket_path(directory);
    let (address, _dir) = match addressable(&path) {
        Ok(a) => a,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(AskError::NoListener(path, e)),
        Err(e) => return Err(AskError::Connect(path, e)),
    };
    let connected = timeout(Duration::from_secs(5), UnixStream::connect(&address)).await;
    let mut stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(AskError::NoListener(path, e));
        }
        Ok(Err(e)) => return Err(AskError::Connect(path, e)),
        Err(_) => {
            return Err(AskError::Connect(
                path,
                io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            ));
        }
    };
    let mut line = serde_json::to_vec(request).map_err(|e| AskError::Io(path.clone(), e.into()))?;
    line.push(b'\n');
    let talk = async {
        stream.write_all(&line).await?;
        let mut reader = BufReader::new(&mut stream);
        let line = read_line(&mut reader).await.map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                io::Error::other(
                    "the agent closed the connection without answering (it may have stopped)",
                )
            } else {
                e
            }
        })?;
        serde_json::from_slice::<Answer>(&line).map_err(io::Error::from)
    };
    match timeout(wait, talk).await {
        Err(_) => Err(AskError::Timeout(wait)),
        Ok(Err(e)) => Err(AskError::Io(path, e)),
        Ok(Ok(answer)) => Ok(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollback_to(to: Option<&str>) -> Request {
        Request {
            rollback: Rollback {
                to: to.map(str::to_string),
            },
        }
    }

    #[test]
    fn the_wire_format_is_one_json_object_per_line() {
        let json = serde_json::to_string(&rollback_to(Some("v1"))).expect("json");
        assert_eq!(json, r#"{"rollback":{"to":"v1"}}"#);
        let parsed: Request = serde_json::from_str(r#"{"rollback": {}}"#).expect("no `to`");
        assert_eq!(parsed, rollback_to(None));
        assert!(serde_json::from_str::<Request>(r#"{"halt": {}}"#).is_err());
        let answer = Answer::new(Exit::Blocked, "blocked".into());
        assert_eq!(answer.exit(), Exit::Blocked);
        assert_eq!(
            Answer {
                exit: 99,
                message: String::new()
            }
            .exit(),
            Exit::Failed
        );
    }

    /// A directory and its deploy lock.
    fn locked() -> (tempfile::TempDir, DeployLock) {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = crate::lock::acquire(dir.path()).expect("lock");
        (dir, lock)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_reaches_the_loop_and_its_answer_the_requester() {
        let (dir, lock) = locked();
        let mut control = ControlSocket::bind(dir.path(), &lock).expect("bind");
        let mode = std::fs::metadata(control.path())
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "owner only");
        let path = dir.path().to_path_buf();
        let asking = tokio::spawn(async move {
            ask(&path, &rollback_to(Some("v1")), Duration::from_secs(10)).await
        });
        let incoming = control.next().await.expect("a request");
        assert_eq!(incoming.request, rollback_to(Some("v1")));
        assert!(!incoming.is_withdrawn());
        incoming.answer(Answer::new(Exit::RolledBack, "post hook failed".into()));
        let answer = asking.await.expect("join").expect("answer");
        assert_eq!(answer.exit(), Exit::RolledBack);
        assert_eq!(answer.message, "post hook failed");
        drop(control);
        assert!(!socket_path(dir.path()).exists(), "removed at exit");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(".lock")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deep_directory_too_long_for_a_socket_address_works() {
        let top = tempfile::tempdir().expect("tempdir");
        let deep = top.path().join("d".repeat(60)).join("e".repeat(60));
        assert!(socket_path(&deep).as_os_str().len() > SUN_PATH_MAX);
        let lock = crate::lock::acquire(&deep).expect("lock");
        let mut control = ControlSocket::bind(&deep, &lock).expect("bind");
        let path = deep.clone();
        let asking =
            tokio::spawn(
                async move { ask(&path, &rollback_to(None), Duration::from_secs(10)).await },
            );
        control
            .next()
            .await
            .expect("a request")
            .answer(Answer::new(Exit::Ok, "done".into()));
        assert_eq!(
            asking.await.expect("join").expect("answer").exit(),
            Exit::Ok
        );
        drop(control);
        let got = ask(&deep, &rollback_to(None), Duration::from_secs(10)).await;
        assert!(matches!(got, Err(AskError::NoListener(..))), "{got:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_listener_is_told_apart_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let got = ask(dir.path(), &rollback_to(None), Duration::from_secs(10)).await;
        assert!(matches!(got, Err(AskError::NoListener(..))), "{got:?}");
        // A socket file nobody listens on: what a killed daemon leaves.
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).expect("bind"));
        let got = ask(dir.path(), &rollback_to(None), Duration::from_secs(10)).await;
        assert!(matches!(got, Err(AskError::NoListener(..))), "{got:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_socket_is_replaced_and_swept() {
        let (dir, lock) = locked();
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).expect("stale"));
        std::fs::create_dir(fsutil::temp_sibling(&socket_path(dir.path()))).expect("tmp");
        let mut control = ControlSocket::bind(dir.path(), &lock).expect("rebind");
        let path = dir.path().to_path_buf();
        let asking =
            tokio::spawn(
                async move { ask(&path, &rollback_to(None), Duration::from_secs(10)).await },
            );
        control
            .next()
            .await
            .expect("a request")
            .answer(Answer::new(Exit::Ok, "done".into()));
        assert_eq!(
            asking.await.expect("join").expect("answer").exit(),
            Exit::Ok
        );
        std::mem::forget(control); // as a kill -9 would: the socket stays
        assert!(socket_path(dir.path()).exists());
        sweep(dir.path()).expect("sweep");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(".lock")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_and_oversized_clients_do_not_block_others() {
        let (dir, lock) = locked();
        let mut control = ControlSocket::bind(dir.path(), &lock).expect("bind");
        let path = socket_path(dir.path());
        // Connected, says nothing, never leaves.
        let _silent = UnixStream::connect(&path).await.expect("connect");
        let started = std::time::Instant::now();
        // A line that never ends.
        let mut flood = UnixStream::connect(&path).await.expect("connect");
        let junk = vec![b'x'; MAX_LINE + 10];
        let _ = flood.write_all(&junk).await;
        let mut answer = String::new();
        let _ = BufReader::new(&mut flood).read_line(&mut answer).await;
        let refused: Answer = serde_json::from_str(&answer).expect("an answer");
        assert_eq!(refused.exit(), Exit::Usage, "{refused:?}");
        // Garbage.
        let mut garbage = UnixStream::connect(&path).await.expect("connect");
        garbage
            .write_all(b"rollback please\n")
            .await
            .expect("write");
        let mut answer = String::new();
        BufReader::new(&mut garbage)
            .read_line(&mut answer)
            .await
            .expect("read");
        assert!(answer.contains("not a request"), "{answer}");
        // Meanwhile a real request still gets through, at once.
        let dir_path = dir.path().to_path_buf();
        let asking = tokio::spawn(async move {
            ask(&dir_path, &rollback_to(None), Duration::from_secs(10)).await
        });
        let incoming = timeout(Duration::from_secs(3), control.next())
            .await
            .expect("not stalled by the silent client")
            .expect("a request");
        incoming.answer(Answer::new(Exit::Ok, "ok".into()));
        assert_eq!(
            asking.await.expect("join").expect("answer").exit(),
            Exit::Ok
        );
        assert!(
            started.elapsed() < READ_TIMEOUT - Duration::from_secs(1),
            "the others are served while the silent client waits out its timeout: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_requester_that_leaves_withdraws_its_request() {
        let (dir, lock) = locked();
        let mut control = ControlSocket::bind(dir.path(), &lock).expect("bind");
        let mut client = UnixStream::connect(control.path()).await.expect("connect");
        client
            .write_all(b"{\"rollback\":{\"to\":null}}\n")
            .await
            .expect("write");
        let incoming = control.next().await.expect("a request");
        drop(client);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !incoming.is_withdrawn() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(incoming.is_withdrawn());
    }
}
