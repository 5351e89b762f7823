//! Long work: a progress bar on stderr from an operation's progress (or an upload's
//! bytes), and Ctrl-C that offers to cancel the operation.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use unicompute_client::{Client, Error, EventFilter, EventStream, Operation, Progress};

use crate::fmt::size;

/// `stage 42% 1.2M/3.0M`.
pub fn text(p: &Progress) -> String {
    let mut s = p.stage.clone();
    if let Some(pc) = p.percent {
        s.push_str(&format!(" {pc:.0}%"));
    }
    match (p.bytes_done, p.bytes_total) {
        (Some(d), Some(t)) => s.push_str(&format!(" {}/{}", size(d), size(t))),
        (Some(d), None) => s.push_str(&format!(" {}", size(d))),
        _ => {}
    }
    s
}

/// How progress is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Not at all (`-q`, `-o json|yaml`).
    Nothing,
    /// A bar redrawn in place when stderr is a terminal, else nothing.
    Bar,
    /// A bar on a terminal, else a plain line per change.
    BarOrLines,
}

impl Show {
    /// `show` when `cond` holds, else this.
    pub fn or_if(self, cond: bool, show: Show) -> Show {
        if cond {
            show
        } else {
            self
        }
    }
}

/// Draws progress on stderr: a bar redrawn in place on a terminal, or a line per
/// change (prefixed by `label`).
pub struct Drawer {
    show: Show,
    tty: bool,
    label: String,
    last: String,
}

impl Drawer {
    pub fn new(show: Show, label: &str) -> Drawer {
        Drawer {
            show,
            tty: std::io::stderr().is_terminal(),
            label: label.to_owned(),
            last: String::new(),
        }
    }

    /// Names what the plain lines are about (an operation's id).
    pub fn set_label(&mut self, label: &str) {
        label.clone_into(&mut self.label);
    }

    /// Whether anything will be drawn (no need to follow events otherwise).
    pub fn visible(&self) -> bool {
        match self.show {
            Show::Nothing => false,
            Show::Bar => self.tty,
            Show::BarOrLines => true,
        }
    }

    pub fn draw(&mut self, p: &Progress) {
        if !self.visible() {
            return;
        }
        let text = text(p);
        if text == self.last {
            return;
        }
        self.last = text.clone();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let pc = p
                .percent
                .or_else(|| match (p.bytes_done, p.bytes_total) {
                    (Some(d), Some(t)) if t > 0 => Some(d as f64 * 100.0 / t as f64),
                    _ => None,
                })
                .unwrap_or(0.0)
                .clamp(0.0, 100.0);
            let filled = (pc / 100.0 * 30.0).round() as usize;
            let _ = write!(
                err,
                "\r\x1b[2K{:<12} [{}{}] {text}",
                p.stage,
                "#".repeat(filled),
                ".".repeat(30 - filled)
            );
        } else {
            let _ = writeln!(err, "{}: {text}", self.label);
        }
        let _ = err.flush();
    }

    /// Ends the bar's line.
    pub fn done(&mut self) {
        if self.tty && self.visible() && !self.last.is_empty() {
            eprintln!();
            self.last.clear();
        }
    }
}

/// The operation events of `backend`, opened before the call that makes the
/// operation so that none of its progress is missed; none when nothing is drawn.
pub fn subscribe(c: &Client, backend: &str, drawer: &Drawer) -> Option<EventStream> {
    if !drawer.visible() {
        return None;
    }
    c.events(
        &EventFilter {
            backends: vec![backend.to_owned()],
            types: vec!["operation".into()],
            ..Default::default()
        },
        None,
    )
    .ok()
}

/// Follows `op` to its end, drawing its progress; Ctrl-C offers to cancel it.
/// `what` names the work for people ("the pull of nginx:alpine").
pub fn follow(
    c: &Client,
    op: &Operation,
    what: &str,
    stream: Option<EventStream>,
    drawer: &mut Drawer,
) -> Result<Operation, Error> {
    offer_cancel_on_sigint(c, &op.id, what);
    let mut finished = None;
    if let Some(stream) = stream {
        for e in stream {
            let Ok(e) = e else { break };
            let Some(o) = e.operation.filter(|o| o.id == op.id) else {
                continue;
            };
            if let Some(p) = &o.progress {
                drawer.draw(p);
            }
            if o.ended() {
                finished = Some(o);
                break;
            }
        }
    }
    let r = match finished {
        Some(o) => Ok(o),
        None => c.wait_operation(&op.id, None),
    };
    // A Ctrl-C is being answered (the operation may have ended because of it): that
    // thread says what happened and ends the process.
    while SIGINT_SEEN.load(Ordering::SeqCst) {
        std::thread::park();
    }
    drawer.done();
    r
}

/// A reader that draws an upload's progress as its bytes are read.
pub struct Counting<R> {
    pub inner: R,
    pub done: u64,
    pub total: Option<u64>,
    pub drawer: Drawer,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        // At most a redraw per percent (or per MiB when the size is unknown).
        let step = self.total.map_or(1 << 20, |t| (t / 100).max(1));
        if n == 0 || (self.done - n as u64) / step != self.done / step {
            self.drawer.draw(&Progress {
                stage: "uploading".into(),
                percent: None,
                bytes_done: Some(self.done),
                bytes_total: self.total,
            });
        }
        Ok(n)
    }
}

static SIGINT_PIPE: AtomicI32 = AtomicI32::new(-1);
static SIGINT_SEEN: AtomicBool = AtomicBool::new(false);

extern "C" fn sigint_to_thread(_: libc::c_int) {
    let fd = SIGINT_PIPE.load(Ordering::SeqCst);
    if fd < 0 || SIGINT_SEEN.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit(2) is async-signal-safe.
        unsafe { libc::_exit(i32::from(crate::exit::INTERRUPTED)) }
    }
    // SAFETY: write(2) is async-signal-safe; the pipe lives as long as the process.
    unsafe {
        libc::write(fd, b"!".as_ptr().cast(), 1);
    }
}

/// Ctrl-C offers to cancel operation `id`: when uc's input and stderr are a
/// terminal it asks (y cancels it, anything else leaves it running in the server);
/// otherwise it says how to cancel it. Then uc exits with 130. A second Ctrl-C
/// exits at once.
pub fn offer_cancel_on_sigint(c: &Client, id: &str, what: &str) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2(2) into an array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        crate::exit_on_sigint(Some(left_running(id, what)));
        return;
    }
    SIGINT_PIPE.store(fds[1], Ordering::SeqCst);
    let (c, id, what) = (c.clone(), id.to_owned(), what.to_owned());
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        loop {
            // SAFETY: read(2) of one byte into a buffer of one.
            let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
            if n == 1 {
                break;
            }
            if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        }
        ask_and_cancel(&c, &id, &what);
        std::process::exit(i32::from(crate::exit::INTERRUPTED));
    });
    // SAFETY: the handler only calls async-signal-safe functions.
    unsafe {
        libc::signal(
            libc::SIGINT,
            sigint_to_thread as *const () as libc::sighandler_t,
        );
    }
}

fn left_running(id: &str, what: &str) -> String {
    format!("\ninterrupted: {what} goes on in the server as operation {id}; cancel it with: uc ops cancel {id}\n")
}

fn ask_and_cancel(c: &Client, id: &str, what: &str) {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let tty = if interactive {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()
    } else {
        None
    };
    let Some(mut tty) = tty else {
        eprint!("{}", left_running(id, what));
        return;
    };
    let _ = write!(tty, "\r\x1b[2K\nCancel {what} (operation {id})? [y/N] ");
    let _ = tty.flush();
    let mut answer = String::new();
    let _ = std::io::BufReader::new(&mut tty).read_line(&mut answer);
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
        eprintln!(
            "Left running: {what} goes on in the server as operation {id} (uc ops wait {id})"
        );
        return;
    }
    match c.cancel_operation(id) {
        Ok(op) if op.status == "cancelled" => eprintln!("Cancelled: operation {id}"),
        Ok(op) => eprintln!(
            "Asked to cancel: operation {id} is {} (uc ops wait {id})",
            op.status
        ),
        Err(e) => eprintln!("Not cancelled: {e}; {what} goes on in the server as operation {id}"),
    }
}
