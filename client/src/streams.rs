//! An instance's streams: logs (a reader), exec to completion, and the WebSocket
//! terminals of the console and interactive exec.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use crate::{encode, Client, Error, API};

/// What `GET /instances/{id}/logs` asks.
#[derive(Debug, Clone, Default)]
pub struct LogsQuery {
    /// Keep reading new output.
    pub follow: bool,
    /// The last N lines only.
    pub tail: Option<u64>,
    /// From this instant (RFC 3339 or epoch seconds).
    pub since: Option<String>,
    /// Prefix lines with their instant.
    pub timestamps: bool,
    /// `stdout`, `stderr` or `all`.
    pub stream: Option<String>,
}

/// `POST /instances/{id}/exec`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// `NAME=value` each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// On a terminal.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Text for its standard input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Seconds before the server stops waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Interactive exec only: whether the command gets the client's input (the
    /// query's `stdin`; the server's default, true, when `None`). The exec to
    /// completion takes its input from `stdin` instead.
    #[serde(skip)]
    pub attach_stdin: Option<bool>,
}

/// What an exec to completion answers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// The exit code (`None` when the timeout passed).
    pub exit_code: Option<i64>,
    /// Standard output.
    #[serde(default)]
    pub stdout: String,
    /// Standard error.
    #[serde(default)]
    pub stderr: String,
    /// Output was cut.
    #[serde(default)]
    pub truncated: bool,
    /// The timeout passed.
    #[serde(default)]
    pub timed_out: bool,
}

/// What a terminal gets from the server.
#[derive(Debug)]
pub enum TermEvent {
    /// Terminal bytes.
    Output(Vec<u8>),
    /// The exec'd command ended.
    Exit(i64),
    /// The server ended the session with this error (a console taken over...).
    Failed(Error),
    /// The session is over.
    Closed,
    /// Nothing within the read timeout.
    Idle,
}

/// A console or an interactive exec, over a WebSocket.
pub struct Terminal {
    socket: WebSocket<TcpStream>,
}

impl Terminal {
    /// Sends keyboard input.
    pub fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        self.socket
            .send(Message::binary(data.to_vec()))
            .map_err(ws_error)
    }

    /// Tells the server the terminal's size.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<(), Error> {
        let m = serde_json::json!({"type": "resize", "cols": cols, "rows": rows});
        self.socket
            .send(Message::text(m.to_string()))
            .map_err(ws_error)
    }

    /// Ends the input (end of file).
    pub fn eof(&mut self) -> Result<(), Error> {
        let m = serde_json::json!({"type": "eof"});
        self.socket
            .send(Message::text(m.to_string()))
            .map_err(ws_error)
    }

    /// The next thing the server sent, waiting up to the read timeout.
    pub fn recv(&mut self) -> TermEvent {
        loop {
            return match self.socket.read() {
                Ok(Message::Binary(b)) => TermEvent::Output(b.to_vec()),
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("exit") => TermEvent::Exit(v["exitCode"].as_i64().unwrap_or(-1)),
                        Some("error") => TermEvent::Failed(Error::Api {
                            status: 0,
                            code: v["error"]["code"].as_str().unwrap_or("").to_owned(),
                            message: v["error"]["message"].as_str().unwrap_or("").to_owned(),
                            details: v["error"]["details"].clone(),
                        }),
                        _ => continue,
                    }
                }
                Ok(Message::Close(_)) => TermEvent::Closed,
                Ok(_) => continue,
                // A signal (SIGWINCH) interrupting the read is no end either: the
                // frame read so far stays in the socket's buffer.
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    TermEvent::Idle
                }
                Err(_) => TermEvent::Closed,
            };
        }
    }

    /// How long [`Terminal::recv`] waits before it answers [`TermEvent::Idle`]
    /// (250 ms unless set; `None` waits for ever).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.socket
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|e| Error::Connect {
                url: String::new(),
                message: e.to_string(),
            })
    }

    /// Closes the session.
    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}

fn ws_error(e: tungstenite::Error) -> Error {
    Error::Connect {
        url: String::new(),
        message: e.to_string(),
    }
}

impl Client {
    /// `GET /instances/{id}/logs`: the output as a reader (it ends with the logs, or
    /// never with `follow` until the server ends it).
    pub fn logs(&self, id: &str, q: &LogsQuery) -> Result<Box<dyn Read + Send>, Error> {
        let mut query = vec![];
        if q.follow {
            query.push(("follow", "true".to_owned()));
        }
        if let Some(t) = q.tail {
            query.push(("tail", t.to_string()));
        }
        if let Some(s) = &q.since {
            query.push(("since", s.clone()));
        }
        if q.timestamps {
            query.push(("timestamps", "true".to_owned()));
        }
        if let Some(s) = &q.stream {
            query.push(("stream", s.clone()));
        }
        let path = format!("{API}/instances/{}/logs", encode(id));
        let resp = self.request(
            "GET",
            &path,
            &query,
            &[("Accept", "text/plain".into())],
            None,
        )?;
        if resp.status().as_u16() >= 400 {
            return Err(match self.read(resp) {
                Err(e) => e,
                Ok(raw) => self.not_api(&raw),
            });
        }
        Ok(Box::new(resp.into_body().into_reader()))
    }

    /// `POST /instances/{id}/exec`: runs a command to completion.
    pub fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, Error> {
        let path = format!("{API}/instances/{}/exec", encode(id));
        let raw = self.send("POST", &path, &[], Some(Self::json(request)))?;
        self.parse(&raw)
    }

    /// `GET /instances/{id}/console` as a WebSocket (plain `http://` servers).
    pub fn console(
        &self,
        id: &str,
        force: bool,
        size: Option<(u16, u16)>,
    ) -> Result<Terminal, Error> {
        let mut q = vec![];
        if force {
            q.push(("force", "true".to_owned()));
        }
        if let Some((c, r)) = size {
            q.push(("cols", c.to_string()));
            q.push(("rows", r.to_string()));
        }
        self.terminal(&format!("{API}/instances/{}/console", encode(id)), &q)
    }

    /// `GET /instances/{id}/exec` as a WebSocket: an interactive command.
    pub fn exec_interactive(
        &self,
        id: &str,
        request: &ExecRequest,
        size: Option<(u16, u16)>,
    ) -> Result<Terminal, Error> {
        let mut q: Vec<(&str, String)> = request
            .command
            .iter()
            .map(|c| ("command", c.clone()))
            .collect();
        q.extend(request.env.iter().map(|e| ("env", e.clone())));
        if let Some(w) = &request.workdir {
            q.push(("workdir", w.clone()));
        }
        if let Some(u) = &request.user {
            q.push(("user", u.clone()));
        }
        q.push(("tty", request.tty.to_string()));
        if let Some(s) = request.attach_stdin {
            q.push(("stdin", s.to_string()));
        }
        if let Some((c, r)) = size {
            q.push(("cols", c.to_string()));
            q.push(("rows", r.to_string()));
        }
        self.terminal(&format!("{API}/instances/{}/exec", encode(id)), &q)
    }

    fn terminal(&self, path: &str, query: &[(&str, String)]) -> Result<Terminal, Error> {
        let Some(hostport) = self.base.strip_prefix("http://") else {
            return Err(Error::Connect {
                url: self.base.clone(),
                message: "the console and interactive exec need a plain http:// server URL in this client".into(),
            });
        };
        let mut uri = format!("ws://{hostport}{path}");
        for (n, (k, v)) in query.iter().enumerate() {
            uri.push(if n == 0 { '?' } else { '&' });
            uri.push_str(&format!("{k}={}", encode(v)));
        }
        let mut req = uri.into_client_request().map_err(ws_error)?;
        if let Some(t) = &self.token {
            if let Ok(v) = format!("Bearer {t}").parse() {
                req.headers_mut().insert("authorization", v);
            }
        }
        let connect = |message: String| Error::Connect {
            url: self.base.clone(),
            message,
        };
        let host = hostport.split('/').next().unwrap_or(hostport);
        let stream = TcpStream::connect(host).map_err(|e| connect(e.to_string()))?;
        let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
        match tungstenite::client::client(req, stream) {
            Ok((socket, _)) => Ok(Terminal { socket }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                let raw = crate::Raw {
                    status,
                    content_type: "application/json".into(),
                    body,
                };
                Err(self.envelope(&raw))
            }
            Err(e) => Err(connect(e.to_string())),
        }
    }
}
