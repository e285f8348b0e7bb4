//! The external command provider (docs/keys.md, "Key commands"): a program that wraps
//! and unwraps data keys over a small line protocol on its standard input and output,
//! so a cloud KMS or a vault works through its own command-line tool.
//!
//! The program is run as `PROGRAM ARGS... wrap` or `PROGRAM ARGS... unwrap` (the
//! command line split as a POSIX shell splits words, no shell run). It reads a request
//! of `name=value` lines on standard input and answers with `name=value` lines on
//! standard output:
//!
//! | operation | request | answer |
//! |---|---|---|
//! | `wrap` | `protocol=1`, `tier=T`, `data-key=B64` | `wrapped=B64`, optional `label=TEXT` |
//! | `unwrap` | `protocol=1`, `tier=T`, `label=TEXT`, `wrapped=B64` | `data-key=B64`, or `result=no-match` |
//!
//! `B64` is standard Base64 with padding. A non-zero exit status is a failure (the last
//! line of its standard error is reported); a program that does not exit within the
//! timeout is killed with its whole process group.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use crate::error::KeysError;
use crate::stanza::{Provider, Stanza, Wrapped};

/// Stanza kind of a key command.
pub const KIND_COMMAND: &str = "command";
/// The protocol version a request names (`protocol=1`).
pub const COMMAND_PROTOCOL: u32 = 1;
/// How long a key command may run unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The most a key command may write on standard output (and the most of its standard
/// error that is kept).
pub const MAX_COMMAND_OUTPUT: usize = 64 * 1024;
/// The largest wrapped key a command may return, in bytes.
pub const MAX_WRAPPED_LEN: usize = 16 * 1024;
/// The longest label a command may return, in bytes.
pub const MAX_LABEL_LEN: usize = 512;

/// A key command: a program and its arguments.
#[derive(Clone)]
pub struct KeyCommand {
    line: String,
    argv: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for KeyCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCommand({:?})", self.line)
    }
}

impl KeyCommand {
    /// Parses `PROGRAM ARGS...` (words split and quoted as by a POSIX shell; no
    /// variables, globs or pipes).
    pub fn parse(line: &str, timeout: Duration) -> Result<KeyCommand, KeysError> {
        let bad = |reason: &str| KeysError::BadCommand { command: line.to_string(), reason: reason.into() };
        let argv = shlex::split(line).ok_or_else(|| bad("unbalanced quotes or a trailing backslash"))?;
        if argv.is_empty() || argv[0].is_empty() {
            return Err(bad("no program given"));
        }
        if timeout.is_zero() {
            return Err(bad("the timeout must be more than 0 seconds"));
        }
        Ok(KeyCommand { line: line.to_string(), argv, timeout })
    }

    /// The command line as given.
    pub fn line(&self) -> &str {
        &self.line
    }

    fn err(&self, reason: impl Into<String>) -> KeysError {
        KeysError::Provider { provider: format!("command '{}'", self.line), reason: reason.into() }
    }

    /// Runs the program with `op` as its last argument and `request` on its standard
    /// input; returns its standard output if it exited with status 0 in time.
    fn run(&self, op: &str, request: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeysError> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).arg(op).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| self.err(format!("cannot start {}: {e}", self.argv[0])))?;
        let deadline = Instant::now() + self.timeout;
        let (tx, rx) = mpsc::channel::<(bool, std::io::Result<Vec<u8>>)>();
        for (is_out, pipe) in [
            (true, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
            (false, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        ] {
            let Some(pipe) = pipe else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                // One byte past the cap, so that too much output is recognised as such.
                let r = pipe.take(MAX_COMMAND_OUTPUT as u64 + 1).read_to_end(&mut buf).map(|_| buf);
                let _ = tx.send((is_out, r));
            });
        }
        drop(tx);
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its input closes the pipe: its exit
            // status tells what happened, so a failed write is not an error by itself.
            let _ = stdin.write_all(request);
        }
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => return Err(self.timed_out(&mut child)),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(self.err(format!("cannot wait for it: {e}"))),
            }
        };
        let (mut out, mut err) = (None, None);
        while out.is_none() || err.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, r)) => out = Some(r),
                Ok((false, r)) => err = Some(r),
                // Something it started still holds its output open.
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(self.timed_out(&mut child)),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let out = Zeroizing::new(
            out.unwrap_or_else(|| Ok(Vec::new())).map_err(|e| self.err(format!("cannot read its output: {e}")))?,
        );
        let err = err.and_then(Result::ok).unwrap_or_default();
        // Checked first: a program whose output was cut off may die of the closed pipe.
        if out.len() > MAX_COMMAND_OUTPUT {
            return Err(self.err(format!("it wrote more than {MAX_COMMAND_OUTPUT} bytes to standard output")));
        }
        if !status.success() {
            let what = match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".to_string(),
            };
            return Err(self.err(match last_line(&err) {
                Some(l) => format!("{what}: {l}"),
                None => what,
            }));
        }
        Ok(out)
    }

    fn timed_out(&self, child: &mut Child) -> KeysError {
        let _ = onnx_protect_fsio::process::kill_group(child.id());
        let _ = child.kill();
        let _ = child.wait();
        self.err(format!("did not answer within {} s and was killed", self.timeout.as_secs_f64()))
    }

    /// The answer's fields, in order; an error names the first line that is not
    /// `name=value`.
    fn fields<'a>(&self, out: &'a [u8]) -> Result<Vec<(&'a str, &'a str)>, KeysError> {
        let text = std::str::from_utf8(out).map_err(|_| self.err("its output is not UTF-8 text"))?;
        let mut fields = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(self.err(format!("output line {} is not name=value", i + 1)));
            };
            fields.push((name.trim(), value.trim()));
        }
        Ok(fields)
    }

    fn field<'a>(&self, fields: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
        fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn base64(&self, name: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, KeysError> {
        B64.decode(value).map(Zeroizing::new).map_err(|e| self.err(format!("its {name} is not Base64: {e}")))
    }
}

/// Whether `c` is a control character or a line break in any convention: U+0000–U+001F,
/// U+007F–U+009F (with VT, FF and NEL), U+2028 and U+2029 (docs/format.md §8).
pub(crate) fn is_label_control(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Checks a `command` stanza's label (docs/format.md §8): at most [`MAX_LABEL_LEN`]
/// bytes, no control character or line break ([`is_label_control`]), so that it is one
/// line of the request a key command reads.
pub(crate) fn check_label(label: &str) -> Result<(), String> {
    if label.len() > MAX_LABEL_LEN {
        return Err(format!("its label has {} bytes ({MAX_LABEL_LEN} at most)", label.len()));
    }
    if label.chars().any(is_label_control) {
        return Err("its label has a control character or a line break".into());
    }
    Ok(())
}

fn last_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(line.chars().take(300).collect())
}

impl Provider for KeyCommand {
    fn kind(&self) -> &str {
        KIND_COMMAND
    }

    fn describe(&self) -> String {
        format!("'{}'", self.line)
    }

    fn wrap(&self, tier: u32, data_key: &[u8; 32]) -> Result<Wrapped, KeysError> {
        let request =
            Zeroizing::new(format!("protocol={COMMAND_PROTOCOL}\ntier={tier}\ndata-key={}\n", B64.encode(data_key)));
        let out = self.run("wrap", request.as_bytes())?;
        let fields = self.fields(&out)?;
        let wrapped = self.field(&fields, "wrapped").ok_or_else(|| self.err("its output has no wrapped= line"))?;
        let body = self.base64("wrapped", wrapped)?;
        if body.is_empty() || body.len() > MAX_WRAPPED_LEN {
            return Err(self.err(format!("its wrapped key has {} bytes (1 to {MAX_WRAPPED_LEN} allowed)", body.len())));
        }
        let label = self.field(&fields, "label").unwrap_or("").to_string();
        check_label(&label).map_err(|r| self.err(r))?;
        Ok(Wrapped { body: body.to_vec(), label })
    }

    fn unwrap(&self, stanza: &Stanza) -> Result<Option<Zeroizing<[u8; 32]>>, KeysError> {
        // A label that could break the request's lines never reaches the command (readers
        // refuse such a stanza before, as modified).
        check_label(&stanza.label).map_err(|r| self.err(format!("not asked: the stanza is modified ({r})")))?;
        let request = format!(
            "protocol={COMMAND_PROTOCOL}\ntier={}\nlabel={}\nwrapped={}\n",
            stanza.tier,
            stanza.label,
            B64.encode(&stanza.body)
        );
        let out = self.run("unwrap", request.as_bytes())?;
        let fields = self.fields(&out)?;
        if let Some(dk) = self.field(&fields, "data-key") {
            let bytes = self.base64("data-key", dk)?;
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| self.err(format!("its data key has {} bytes, not 32", bytes.len())))?;
            return Ok(Some(Zeroizing::new(key)));
        }
        match self.field(&fields, "result") {
            Some("no-match") => Ok(None),
            _ => Err(self.err("its output has neither a data-key= line nor result=no-match")),
        }
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A script run through `sh`: a file this process has just written is never executed
    /// itself, since another test thread's fork can still hold its write descriptor
    /// (exec then fails with ETXTBSY).
    fn script(dir: &Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        format!("sh '{}'", p.display())
    }

    fn toy_kms() -> String {
        format!("{}/../../fixtures/key-commands/toy-kms.sh", env!("CARGO_MANIFEST_DIR"))
    }

    fn stanza_of(w: Wrapped) -> Stanza {
        Stanza { kind: KIND_COMMAND.into(), tier: 1, label: w.label, salt: Vec::new(), kdf: None, body: w.body }
    }

    #[test]
    fn a_working_command_wraps_and_unwraps() {
        let c = KeyCommand::parse(&format!("'{}' key-one", toy_kms()), DEFAULT_COMMAND_TIMEOUT).unwrap();
        let dk = [7u8; 32];
        let w = c.wrap(1, &dk).unwrap();
        assert_eq!(w.label, "toy-kms:key-one");
        assert_eq!(w.body, format!("key-one:1:{}", B64.encode(dk)).into_bytes());
        let stanza = stanza_of(w);
        assert_eq!(*c.unwrap(&stanza).unwrap().unwrap(), dk);
        let other = KeyCommand::parse(&format!("{} key-two", toy_kms()), DEFAULT_COMMAND_TIMEOUT).unwrap();
        assert!(other.unwrap(&stanza).unwrap().is_none(), "another key's command answers no-match");
    }

    #[test]
    fn a_failing_command_reports_its_status_and_last_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(
            dir.path(),
            "fail.sh",
            "cat >/dev/null\necho 'first line' >&2\necho 'AccessDenied: no kms:Encrypt' >&2\nexit 3\n",
        );
        let c = KeyCommand::parse(&s, DEFAULT_COMMAND_TIMEOUT).unwrap();
        let e = c.wrap(1, &[0; 32]).unwrap_err().to_string();
        assert!(e.contains("exited with status 3: AccessDenied: no kms:Encrypt"), "{e}");
        assert!(e.contains("fail.sh"), "{e}");
    }

    #[test]
    fn a_hanging_command_is_killed_at_the_timeout_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child.pid");
        // The child keeps standard output open after the script itself would be gone.
        let s = script(dir.path(), "hang.sh", &format!("sleep 300 &\necho $! > '{}'\nwait\n", marker.display()));
        let c = KeyCommand::parse(&s, Duration::from_millis(500)).unwrap();
        let e = c.wrap(1, &[0; 32]).unwrap_err().to_string();
        assert!(e.contains("did not answer within 0.5 s and was killed"), "{e}");
        let pid = std::fs::read_to_string(&marker).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // SIGKILL is delivered asynchronously: wait (boundedly) for the kernel to act.
        let alive = || std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "));
        for _ in 0..200 {
            if !alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !alive(),
            "the hanging command's child {} still runs: {:?}",
            pid.trim(),
            std::fs::read_to_string(&stat)
        );
    }

    #[test]
    fn garbage_output_is_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("noeq.sh", "echo 'hello world'", "output line 1 is not name=value"),
            ("nob64.sh", "echo 'wrapped=%%%'", "its wrapped is not Base64"),
            ("missing.sh", "echo 'label=x'", "no wrapped= line"),
            ("binary.sh", "printf 'wrapped=\\377\\376\\n'", "not UTF-8"),
            ("huge.sh", "head -c 70000 /dev/zero | tr '\\0' a", "more than 65536 bytes"),
        ];
        for (name, body, want) in cases {
            let s = script(dir.path(), name, &format!("cat >/dev/null\n{body}\n"));
            let c = KeyCommand::parse(&s, DEFAULT_COMMAND_TIMEOUT).unwrap();
            let e = c.wrap(1, &[0; 32]).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
        let s = script(dir.path(), "short.sh", "cat >/dev/null\necho data-key=AAAA\n");
        let c = KeyCommand::parse(&s, DEFAULT_COMMAND_TIMEOUT).unwrap();
        let stanza = stanza_of(Wrapped { body: vec![1], label: String::new() });
        let e = c.unwrap(&stanza).unwrap_err().to_string();
        assert!(e.contains("its data key has 3 bytes, not 32"), "{e}");
        let s = script(dir.path(), "neither.sh", "cat >/dev/null\necho result=maybe\n");
        let c = KeyCommand::parse(&s, DEFAULT_COMMAND_TIMEOUT).unwrap();
        let e = c.unwrap(&stanza).unwrap_err().to_string();
        assert!(e.contains("neither a data-key= line nor result=no-match"), "{e}");
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for (line, want) in [("", "no program"), ("'unterminated", "unbalanced quotes"), ("   ", "no program")] {
            let e = KeyCommand::parse(line, DEFAULT_COMMAND_TIMEOUT).unwrap_err().to_string();
            assert!(e.contains(want), "{line:?}: {e}");
        }
        let c = KeyCommand::parse("/nonexistent/provider --x", DEFAULT_COMMAND_TIMEOUT).unwrap();
        let e = c.wrap(1, &[0; 32]).unwrap_err().to_string();
        assert!(e.contains("cannot start /nonexistent/provider"), "{e}");
    }
}
