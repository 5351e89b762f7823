//! A small blocking WebSocket client for the console and interactive exec (loopback
//! only), with the timeouts a test needs so that a bug fails instead of hanging.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// An open WebSocket.
pub struct Ws {
    socket: WebSocket<TcpStream>,
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
}

/// What the server sent: terminal bytes, a control message, or the close.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// A binary message.
    Bytes(Vec<u8>),
    /// A text (control) message, as JSON.
    Control(Value),
    /// The close, with its code.
    Closed(Option<u16>),
}

/// Connects `path` (with its query) with `token`: the socket, or the refusal's status
/// and body (an error envelope).
pub fn connect(base: &str, path: &str, token: &str) -> Result<Ws, (u16, Value)> {
    connect_with(base, path, &[("authorization", format!("Bearer {token}"))])
}

/// Connects `path` with these headers (none added).
pub fn connect_with(
    base: &str,
    path: &str,
    headers: &[(&'static str, String)],
) -> Result<Ws, (u16, Value)> {
    let addr = base.trim_start_matches("http://");
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().expect("header"));
    }
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    match tungstenite::client::client(req, stream) {
        Ok((socket, resp)) => Ok(Ws {
            socket,
            protocol: resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(e) => panic!("websocket {path}: {e}"),
    }
}

impl Ws {
    /// Sends terminal bytes.
    pub fn send_bytes(&mut self, data: &[u8]) {
        self.socket
            .send(Message::binary(data.to_vec()))
            .expect("send");
    }

    /// Sends a control message.
    pub fn send_control(&mut self, value: Value) {
        self.socket
            .send(Message::text(value.to_string()))
            .expect("send");
    }

    /// The next message within `limit`, or `None`.
    pub fn next(&mut self, limit: Duration) -> Option<Got> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(Message::Binary(b)) => return Some(Got::Bytes(b.to_vec())),
                Ok(Message::Text(t)) => {
                    return Some(Got::Control(
                        serde_json::from_str(t.as_str()).unwrap_or(Value::Null),
                    ))
                }
                Ok(Message::Close(frame)) => {
                    return Some(Got::Closed(frame.map(|f| u16::from(f.code))))
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return Some(Got::Closed(None)),
            }
        }
        None
    }

    /// Reads terminal bytes until they contain `marker` (true), or `limit` passes or
    /// the socket closes (false). Everything read is kept in `seen`.
    pub fn read_until(&mut self, marker: &str, limit: Duration, seen: &mut Vec<u8>) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Some(Got::Bytes(b)) => {
                    seen.extend_from_slice(&b);
                    if String::from_utf8_lossy(seen).contains(marker) {
                        return true;
                    }
                }
                Some(Got::Control(_)) => {}
                Some(Got::Closed(_)) | None => return false,
            }
        }
        false
    }

    /// Closes from the client's side.
    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}
