//! The local control socket: create, start, stop, delete, list and describe flow logs
//! at run time, and the CLI side that talks to it.
//!
//! A Unix stream socket (no TCP port), mode 0600 (owner only) or 0660 with a
//! configured group. One JSON request per connection, one line of at most
//! [`MAX_REQUEST`] bytes, read within [`READ_TIMEOUT`]; one JSON response line:
//!
//! ```text
//! {"op":"create","flow_log":{"name":"vpn","resource_type":"ENI","resource_ids":["wg0"],"window":"1m"}}
//! {"op":"start","name":"vpn"}   {"op":"stop","name":"vpn"}   {"op":"delete","name":"vpn"}
//! {"op":"list"}                 {"op":"describe","name":"vpn"}
//! → {"ok":true,...}  or  {"ok":false,"error":"no flow log named \"vpn\" (see `flowlog list`)"}
//! ```
//!
//! Connections are served by their own tasks, which hand each parsed request to the
//! agent loop over a channel: a slow or hostile client never blocks capture, and the
//! loop applies requests one at a time between drains.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::FlowLogFile;

/// Longest request line.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client must send its request within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default socket path of `flowlog run` (daemon) and the CLI.
pub const DEFAULT_SOCKET: &str = "/run/flowlog/flowlog.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Create { flow_log: Box<FlowLogFile> },
    Start { name: String },
    Stop { name: String },
    Delete { name: String },
    List,
    Describe { name: String },
}

/// One flow log as `list` and `describe` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(flatten)]
    pub flow_log: FlowLogFile,
    /// cli, config or api.
    pub origin: String,
    /// Interfaces captured now.
    pub interfaces: Vec<String>,
    /// Records emitted since the agent started.
    pub records: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_log: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_logs: Option<Vec<Status>>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            flow_log: None,
            flow_logs: None,
        }
    }

    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
            flow_log: None,
            flow_logs: None,
        }
    }
}

/// A request waiting for the agent loop.
pub type Pending = (Request, oneshot::Sender<Response>);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {}: another agent is serving it (stop it, or pass --socket PATH)", path.display())]
    InUse { path: PathBuf },
    #[error("control socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {}: group {group:?} does not exist", path.display())]
    Group { path: PathBuf, group: String },
}

/// The listening socket; removes its file when dropped.
pub struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn gid_of(group: &str) -> Option<u32> {
    let c = std::ffi::CString::new(group).ok()?;
    // SAFETY: valid C string; getgrnam returns a pointer to static storage or NULL,
    // read immediately (the agent does not call getgrnam concurrently).
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        None
    } else {
        // SAFETY: non-null result of getgrnam.
        Some(unsafe { (*g).gr_gid })
    }
}

/// Binds the socket (0600, or 0660 owned by `group`) and serves it: parsed requests
/// arrive on the returned channel.
pub async fn serve(
    path: &Path,
    group: Option<&str>,
) -> Result<(Server, mpsc::Receiver<Pending>), ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse {
                path: path.to_owned(),
            });
        }
        // A stale socket of an agent that died.
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // Create it owner-only from the start (no window where others could connect).
    // SAFETY: umask only changes the process file-mode mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(bind_err)?;
    let server = Server {
        path: path.to_owned(),
    };
    if let Some(group) = group {
        let gid = gid_of(group).ok_or_else(|| ControlError::Group {
            path: path.to_owned(),
            group: group.to_owned(),
        })?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client(stream, tx).await {
                            debug!(error = %e, "control connection");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok((server, rx))
}

/// Parses one request line; the error is the message for the client.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| {
        let m = e.to_string();
        if m.starts_with("unknown variant") {
            format!("unknown request: {m}")
        } else {
            m
        }
    })
}

async fn client(stream: UnixStream, tx: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = Vec::new();
    let mut limited = BufReader::new(rd).take(MAX_REQUEST as u64 + 1);
    let read = tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
    let response = match read {
        Err(_) => Response::error(format!(
            "request not received within {} s",
            READ_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => {
            Response::error(format!("request larger than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => match parse_request(&line) {
            Err(m) => Response::error(format!("bad request: {m}")),
            Ok(req) => {
                let (rtx, rrx) = oneshot::channel();
                if tx.send((req, rtx)).await.is_err() {
                    Response::error("the agent is stopping")
                } else {
                    rrx.await
                        .unwrap_or_else(|_| Response::error("the agent is stopping"))
                }
            }
        },
    };
    let mut text = serde_json::to_vec(&response).expect("response serializes");
    text.push(b'\n');
    wr.write_all(&text).await?;
    wr.shutdown().await
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {}: {source} (is `flowlog run` running? its socket is set with --socket)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {} sent an invalid response: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
}

/// Sends one request and waits for the response (blocking: the CLI has no runtime).
pub fn call(path: &Path, req: &Request) -> Result<Response, ClientError> {
    use std::io::{BufRead as _, Write as _};
    let mut s =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut text = serde_json::to_vec(req).expect("request serializes");
    text.push(b'\n');
    s.write_all(&text).map_err(io)?;
    let mut line = String::new();
    std::io::BufReader::new(&s)
        .read_line(&mut line)
        .map_err(io)?;
    serde_json::from_str(&line).map_err(|e| ClientError::Protocol {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_reject_unknown_things() {
        assert_eq!(parse_request(br#"{"op":"list"}"#), Ok(Request::List));
        assert_eq!(
            parse_request(br#"{"op":"stop","name":"a"}"#),
            Ok(Request::Stop { name: "a".into() })
        );
        let e = parse_request(br#"{"op":"reboot"}"#).unwrap_err();
        assert!(
            e.starts_with("unknown request: unknown variant `reboot`"),
            "{e}"
        );
        let e = parse_request(
            br#"{"op":"create","flow_log":{"name":"a","resource_type":"VPC","colour":"red"}}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(parse_request(b"{").is_err());
    }

    #[tokio::test]
    async fn the_socket_is_owner_only_and_answers_bad_requests() {
        let dir = std::env::temp_dir().join(format!("flowlog-ctl-{}", std::process::id()));
        let path = dir.join("s.sock");
        let (server, mut rx) = serve(&path, None).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second agent on the same socket is refused.
        assert!(matches!(
            serve(&path, None).await,
            Err(ControlError::InUse { .. })
        ));
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(match req {
                    Request::List => Response {
                        flow_logs: Some(vec![]),
                        ..Response::ok()
                    },
                    _ => Response::error("no"),
                });
            }
        });
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || call(&p, &Request::List))
            .await
            .unwrap()
            .unwrap();
        assert!(r.ok);
        // Garbage and oversized requests get an error, not a hang.
        for body in [b"not json\n".to_vec(), vec![b'x'; MAX_REQUEST + 10]] {
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(&body).await.unwrap();
            let mut out = String::new();
            BufReader::new(s).read_line(&mut out).await.unwrap();
            let r: Response = serde_json::from_str(&out).unwrap();
            assert!(!r.ok);
            assert!(r.error.unwrap().contains(if body.len() > 100 {
                "larger than"
            } else {
                "bad request"
            }));
        }
        drop(server);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
