//! The local terminal of `uc console` and `uc exec -it`: raw mode, restored on every
//! way out (a return, a panic, a signal), the window's size and its changes
//! (SIGWINCH). Plain termios through `libc`, which the CLI already uses for its
//! signals: no other crate for a dozen calls.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};

/// The terminal's settings before raw mode.
static SAVED: OnceLock<libc::termios> = OnceLock::new();
/// Raw mode is on (the settings in `SAVED` are to be put back).
static RAW: AtomicBool = AtomicBool::new(false);
/// The window changed size since it was last asked.
static WINCH: AtomicBool = AtomicBool::new(false);

/// Puts the saved settings back if raw mode is on. Async-signal-safe (an atomic
/// swap, an atomic load and tcsetattr(3)).
fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        if let Some(t) = SAVED.get() {
            // SAFETY: tcsetattr on standard input with settings tcgetattr gave.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    restore();
    // SAFETY: _exit(2) is async-signal-safe. 128 + the signal, as shells count
    // (SIGINT: 130, as the CLI's conventions ask).
    unsafe { libc::_exit(128 + sig) }
}

extern "C" fn on_winch(_: libc::c_int) {
    WINCH.store(true, Ordering::SeqCst);
}

fn handle(sig: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) {
    // SAFETY: a zeroed sigaction is valid; the handlers only touch atomics and call
    // async-signal-safe functions.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as libc::sighandler_t;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// For the length of a session: SIGINT, SIGTERM, SIGHUP and SIGQUIT restore the
/// terminal and end the process with 128 + the signal; a panic restores it before
/// its message; SIGWINCH is noted for [`take_resized`].
pub fn install_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            handle(sig, on_signal, 0);
        }
        handle(libc::SIGWINCH, on_winch, libc::SA_RESTART);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Whether the window changed size since the last call.
pub fn take_resized() -> bool {
    WINCH.swap(false, Ordering::SeqCst)
}

/// Standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// The window's size (columns, rows): of standard output, else standard input,
/// else standard error, whichever is a terminal.
pub fn size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO, libc::STDERR_FILENO] {
        // SAFETY: a zeroed winsize is valid; TIOCGWINSZ fills it or fails.
        let mut w: libc::winsize = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } == 0;
        if ok && w.ws_col > 0 && w.ws_row > 0 {
            return Some((w.ws_col, w.ws_row));
        }
    }
    None
}

/// Raw mode on standard input (a terminal) while this lives: every key goes to
/// the remote side as typed (Ctrl-C included), no local echo.
pub struct RawMode(());

impl RawMode {
    /// Enters raw mode; [`install_handlers`] first, so that no way out leaves the
    /// terminal raw.
    pub fn enter() -> std::io::Result<RawMode> {
        install_handlers();
        // SAFETY: tcgetattr fills a zeroed termios or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let saved = *SAVED.get_or_init(|| t);
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the copy in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        RAW.store(true, Ordering::SeqCst);
        // SAFETY: as above, settings from tcgetattr edited by cfmakeraw.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            RAW.store(false, Ordering::SeqCst);
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}
