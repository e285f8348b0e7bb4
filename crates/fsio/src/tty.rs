//! Reading a secret line at the terminal without echo.
//!
//! Echo is turned off *before* the prompt is shown, so that nothing typed after the
//! prompt appears can ever be echoed (a prompt shown first and echo turned off after it
//! leaves a window in which a fast typist, or a program driving a terminal, sees its
//! input echoed). The terminal's settings are restored on every path out, errors and
//! panics included.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};

/// Shows `prompt` on the controlling terminal (`/dev/tty`) and reads one line typed
/// there, with echo off, into `line` (without its line end). `line` is cleared first;
/// the caller owns (and should wipe) the buffer. Fails where there is no terminal.
pub fn read_hidden_line(prompt: &str, line: &mut Vec<u8>) -> io::Result<()> {
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let guard = EchoOff::new(&tty)?;
    let mut out = &tty;
    out.write_all(prompt.as_bytes())?;
    out.flush()?;
    line.clear();
    let mut reader = BufReader::with_capacity(1, &tty);
    reader.read_until(b'\n', line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    drop(guard);
    // The newline the user typed was not echoed either.
    out.write_all(b"\n")?;
    Ok(())
}

/// Echo turned off on a terminal until dropped.
struct EchoOff<'a> {
    #[cfg(unix)]
    tty: &'a File,
    #[cfg(unix)]
    saved: libc::termios,
    #[cfg(not(unix))]
    _tty: std::marker::PhantomData<&'a File>,
}

#[cfg(unix)]
impl<'a> EchoOff<'a> {
    fn new(tty: &'a File) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let fd = tty.as_raw_fd();
        // SAFETY: `termios` is a plain C struct for which all-zero bytes are a valid value;
        // `tcgetattr` fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open descriptor borrowed from `tty` for the call, and
        // `saved` is a valid, writable `termios`.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        quiet.c_lflag |= libc::ICANON;
        // SAFETY: as above; `quiet` is a valid `termios` read by the call.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { tty, saved })
    }
}

#[cfg(unix)]
impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is still open (borrowed for the guard's life) and
        // `saved` is the `termios` that `tcgetattr` returned.
        unsafe {
            libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &self.saved);
        }
    }
}

#[cfg(not(unix))]
impl<'a> EchoOff<'a> {
    fn new(_tty: &'a File) -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "no prompt without echo on this system"))
    }
}
