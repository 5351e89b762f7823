//! A small Server-Sent Events client over a plain socket (loopback only): the test
//! controls exactly when it reads, when it stops reading, and when it hangs up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One SSE message, or a comment line (`comment` set, the rest empty).
#[derive(Debug, Clone)]
pub struct Frame {
    /// `id:`
    pub id: Option<u64>,
    /// `event:`
    pub event: Option<String>,
    /// `data:` parsed as JSON (Null when not JSON).
    pub data: Value,
    /// `data:` as sent (the lines joined by `\n`).
    pub text: String,
    /// A comment (`: heartbeat`).
    pub comment: Option<String>,
    /// When the client had read it whole.
    pub at: Instant,
}

/// A subscription.
pub struct Sse {
    socket: TcpStream,
    frames: Receiver<Frame>,
    /// The reading thread's work, until [`Sse::resume`] starts it (a paused client).
    paused: Option<Box<dyn FnOnce() + Send>>,
    /// The HTTP status.
    pub status: u16,
    /// The response head, lower-cased.
    pub head: String,
    /// The body, when the answer is not a stream (an error envelope).
    pub error: Value,
}

fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(size);
    Some(buf)
}

impl Sse {
    /// Subscribes: `GET path` (with its query) with `token` and the extra `headers`
    /// (`("Last-Event-ID", "12")`).
    pub fn open(base: &str, path: &str, token: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::open_with(base, path, token, headers, None, false)
    }

    /// As [`Sse::open`], but reading nothing after the response head until
    /// [`Sse::resume`]. Its socket keeps the kernel's default buffers: a tiny receive
    /// buffer could never announce a window of one segment (64 kB on loopback), so
    /// the server would only send again at its zero-window probes, backing off to
    /// minutes.
    pub fn open_paused(base: &str, path: &str, token: &str) -> Sse {
        Sse::open_with(base, path, token, &[], None, true)
    }

    fn open_with(
        base: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        rcvbuf: Option<i32>,
        paused: bool,
    ) -> Sse {
        let addr = base.trim_start_matches("http://");
        let socket = TcpStream::connect(addr).expect("connect");
        if let Some(n) = rcvbuf {
            use std::os::fd::AsRawFd;
            // SAFETY: setsockopt on our own socket with a valid int.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&n as *const i32).cast(),
                    std::mem::size_of::<i32>() as u32,
                );
            }
        }
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        (&socket).write_all(req.as_bytes()).expect("send");
        let mut reader = BufReader::new(socket.try_clone().expect("clone"));
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head.contains("transfer-encoding: chunked");
        let (tx, rx) = channel();
        if status != 200 {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            return Sse {
                socket,
                frames: rx,
                paused: None,
                status,
                head,
                error: serde_json::from_slice(&body).unwrap_or(Value::Null),
            };
        }
        let work = move || {
            let mut pending = String::new();
            loop {
                let bytes = if chunked {
                    match read_chunk(&mut reader) {
                        Some(b) => b,
                        None => return,
                    }
                } else {
                    let mut b = vec![0; 8192];
                    match reader.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            b.truncate(n);
                            b
                        }
                    }
                };
                pending.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = pending.find("\n\n") {
                    let block: String = pending.drain(..end + 2).collect();
                    let mut f = Frame {
                        id: None,
                        event: None,
                        data: Value::Null,
                        text: String::new(),
                        comment: None,
                        at: Instant::now(),
                    };
                    let mut data = String::new();
                    let mut lines = 0;
                    for line in block.lines() {
                        if let Some(c) = line.strip_prefix(':') {
                            f.comment = Some(c.trim().to_owned());
                        } else if let Some(v) = line.strip_prefix("id: ") {
                            f.id = v.parse().ok();
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            f.event = Some(v.to_owned());
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            if lines > 0 {
                                data.push('\n');
                            }
                            lines += 1;
                            data.push_str(v);
                        }
                    }
                    f.data = serde_json::from_str(&data).unwrap_or(Value::Null);
                    f.text = data;
                    if tx.send(f).is_err() {
                        return;
                    }
                }
            }
        };
        let mut sse = Sse {
            socket,
            frames: rx,
            paused: Some(Box::new(work)),
            status,
            head,
            error: Value::Null,
        };
        if !paused {
            sse.resume();
        }
        sse
    }

    /// Starts reading (a client opened paused).
    pub fn resume(&mut self) {
        if let Some(work) = self.paused.take() {
            std::thread::spawn(work);
        }
    }

    /// The next frame, comments included; None at the end of the stream or after
    /// `limit`.
    pub fn next_frame(&self, limit: Duration) -> Option<Frame> {
        self.frames.recv_timeout(limit).ok()
    }

    /// The next event (comments skipped); None at the end or after `limit`.
    pub fn next_event(&self, limit: Duration) -> Option<Frame> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let f = self.frames.recv_timeout(left).ok()?;
            if f.comment.is_none() {
                return Some(f);
            }
        }
    }

    /// Events until one matches `want` (returned with those before it), or None.
    pub fn until(&self, limit: Duration, want: impl Fn(&Frame) -> bool) -> Option<Vec<Frame>> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let f = self.next_event(left)?;
            let hit = want(&f);
            seen.push(f);
            if hit {
                return Some(seen);
            }
        }
    }

    /// Whether the server ended the stream within `limit` (frames before the end
    /// are dropped).
    pub fn ended_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.frames.recv_timeout(left) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => return true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// The state of the server's end of this connection, as the kernel has it
    /// (`/proc/net/tcp`: `01` established, `04` FIN-WAIT-1 once the server closed it
    /// with bytes still unsent...); None once the kernel forgot it.
    pub fn server_side_state(&self) -> Option<String> {
        let local = self.socket.local_addr().ok()?;
        let peer = self.socket.peer_addr().ok()?;
        let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
        tcp.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            (port(f.get(1)?) == Some(peer.port()) && port(f.get(2)?) == Some(local.port()))
                .then(|| f.get(3).map(|s| s.to_string()))
                .flatten()
        })
    }

    /// Hangs up.
    pub fn close(self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}
