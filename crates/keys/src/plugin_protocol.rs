//! The client side of the age plugin protocol (C2SP `age-plugin.md`, versions
//! `recipient-v1` and `identity-v1`): finding `age-plugin-NAME`, running it, and the
//! exchange of age stanzas over its standard input and output.
//!
//! What a plugin writes is read with limits: a line of at most [`MAX_PLUGIN_LINE`] bytes
//! and a command (its first line and its body's base64 text) of at most
//! [`MAX_PLUGIN_COMMAND`] bytes. The protocol's lines are short (a command and its
//! arguments, then base64 body lines of 64 columns), so a plugin that writes more is
//! refused as broken, with its name, before it can fill the memory.
//!
//! The plugin is looked up in the directories of `PATH` that are absolute: an empty entry,
//! `.` or another relative directory (which would name the current directory, wherever the
//! command runs) is skipped, as git skips them for its helpers.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza as AgeStanza, FILE_KEY_BYTES};
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::KeysError;

/// How a plugin reaches the person at the machine: messages (touch the token), requests
/// for a PIN or a confirmation. Each method answers `None` where there is no one to ask;
/// the plugin then fails with its own error. Libraries never print: the binary gives an
/// implementation that writes to the terminal.
pub trait PluginPrompt: Send + Sync {
    /// A message from the plugin (e.g. "touch your YubiKey").
    fn message(&self, _text: &str) {}
    /// A secret (a PIN) the plugin asks for.
    fn secret(&self, _description: &str) -> Option<Zeroizing<String>> {
        None
    }
    /// A public answer the plugin asks for.
    fn public(&self, _description: &str) -> Option<String> {
        None
    }
    /// A yes/no question.
    fn confirm(&self, _message: &str, _yes: &str, _no: Option<&str>) -> Option<bool> {
        None
    }
}

/// A [`PluginPrompt`] with no one to ask: messages are dropped, requests answered `None`.
pub struct NoPrompt;

impl PluginPrompt for NoPrompt {}

/// The longest line a plugin may write (64 KiB).
pub const MAX_PLUGIN_LINE: usize = 64 * 1024;
/// The most a plugin may write for one command: its first line and the base64 text of its
/// body (1 MiB).
pub const MAX_PLUGIN_COMMAND: usize = 1024 * 1024;
/// Why a plugin that stopped answering failed.
const DIED: &str = "it exited in the middle of the age plugin protocol (AGEDEBUG=plugin shows what it printed)";
/// Columns of a full body line of an age stanza.
const BODY_COLUMNS: usize = 64;

/// The program that handles plugin `name`.
pub(crate) fn binary_name(name: &str) -> String {
    format!("age-plugin-{name}")
}

/// Whether `name` can name a plugin program (letters, digits, `+ - . _`; not empty), as age
/// requires: no path separator can get into the program's name.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_'))
}

/// `age-plugin-NAME` in the absolute directories of `path` (the value of `PATH`), the
/// first that holds it as an executable file. Relative entries (empty, `.`, `bin`) are
/// skipped: they name the current directory, which may be anyone's.
pub fn find_plugin_in(name: &str, path: &OsStr) -> Option<PathBuf> {
    if !valid_name(name) {
        return None;
    }
    let program = binary_name(name);
    std::env::split_paths(path).filter(|dir| dir.is_absolute()).find_map(|dir| {
        let candidate = dir.join(&program);
        if is_executable(&candidate) {
            return Some(candidate);
        }
        #[cfg(windows)]
        {
            let exe = dir.join(format!("{program}.exe"));
            if is_executable(&exe) {
                return Some(exe);
            }
        }
        None
    })
}

fn is_executable(p: &Path) -> bool {
    let Ok(m) = std::fs::metadata(p) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        m.is_file()
    }
}

/// One command or response of the protocol.
struct Message {
    tag: String,
    args: Vec<String>,
    body: Zeroizing<Vec<u8>>,
}

/// A running plugin and the protocol's pipes.
struct Connection {
    name: String,
    child: Option<Child>,
    input: Option<ChildStdin>,
    output: Option<BufReader<ChildStdout>>,
    /// Whether the exchange ended as the protocol says (the plugin then exits by itself).
    finished: bool,
    _dir: tempfile::TempDir,
}

impl Connection {
    /// Starts `age-plugin-NAME --age-plugin=STATE_MACHINE` in a new empty directory, its
    /// standard error discarded (shown with `AGEDEBUG=plugin`, as age does).
    fn open(name: &str, state_machine: &str) -> Result<Connection, KeysError> {
        let program = binary_name(name);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let binary = find_plugin_in(name, &path).ok_or_else(|| KeysError::Provider {
            provider: program.clone(),
            reason: format!(
                "could not find '{program}' on the PATH (its absolute directories are searched; an empty entry, '.' \
                 and other relative ones are not)"
            ),
        })?;
        let err = |what: &str, e: std::io::Error| KeysError::Provider {
            provider: program.clone(),
            reason: format!("{what}: {e}"),
        };
        let dir = tempfile::tempdir().map_err(|e| err("a directory to run it in", e))?;
        let debug = std::env::var("AGEDEBUG").is_ok_and(|v| v == "plugin");
        let mut child = Command::new(&binary)
            .arg(format!("--age-plugin={state_machine}"))
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if debug { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .map_err(|e| err(&format!("cannot run {}", binary.display()), e))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err("its pipes", std::io::Error::other("not open")));
        };
        Ok(Connection {
            name: name.to_string(),
            child: Some(child),
            input: Some(input),
            output: Some(BufReader::new(output)),
            finished: false,
            _dir: dir,
        })
    }

    fn fail(&self, reason: impl Into<String>) -> KeysError {
        KeysError::Provider { provider: binary_name(&self.name), reason: reason.into() }
    }

    fn died(&self) -> KeysError {
        self.fail(DIED)
    }

    /// Writes one command: `-> TAG ARGS…`, then the body in base64 lines of 64 columns, the
    /// last one shorter (empty if need be).
    fn send(&mut self, tag: &str, args: &[&str], body: &[u8]) -> Result<(), KeysError> {
        let mut text = Zeroizing::new(String::from("->"));
        for w in std::iter::once(tag).chain(args.iter().copied()) {
            text.push(' ');
            text.push_str(w);
        }
        text.push('\n');
        let encoded = Zeroizing::new(B64.encode(body));
        let mut rest = encoded.as_str();
        while rest.len() >= BODY_COLUMNS {
            let (line, more) = rest.split_at(BODY_COLUMNS);
            text.push_str(line);
            text.push('\n');
            rest = more;
        }
        text.push_str(rest);
        text.push('\n');
        let Some(input) = self.input.as_mut() else { return Err(self.died()) };
        if input.write_all(text.as_bytes()).and_then(|_| input.flush()).is_err() {
            return Err(self.died());
        }
        Ok(())
    }

    /// Reads one line (without its newline), refusing one longer than [`MAX_PLUGIN_LINE`]
    /// before it is read whole.
    fn read_line(&mut self, budget: &mut usize) -> Result<Vec<u8>, KeysError> {
        let name = self.name.clone();
        let fail = |reason: String| KeysError::Provider { provider: binary_name(&name), reason };
        let mut line = Vec::new();
        loop {
            let Some(output) = self.output.as_mut() else { return Err(fail(DIED.into())) };
            let buf = match output.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fail(format!("reading its output: {e}"))),
            };
            if buf.is_empty() {
                return Err(fail(DIED.into()));
            }
            let (take, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if line.len() + take > MAX_PLUGIN_LINE {
                return Err(fail(format!(
                    "it wrote a line longer than {MAX_PLUGIN_LINE} bytes (the age plugin protocol's lines are short): \
                     refused"
                )));
            }
            if take + 1 > *budget {
                return Err(fail(format!(
                    "it wrote a command of more than {MAX_PLUGIN_COMMAND} bytes (the age plugin protocol's commands are \
                     short): refused"
                )));
            }
            *budget -= take + 1;
            line.extend_from_slice(&buf[..take]);
            output.consume(take + usize::from(end));
            if end {
                return Ok(line);
            }
        }
    }

    /// Reads one command: `-> TAG ARGS…` (each word printable ASCII), then base64 lines of 64
    /// columns up to a shorter one, canonical base64 without padding.
    fn receive(&mut self) -> Result<Message, KeysError> {
        let mut budget = MAX_PLUGIN_COMMAND;
        let head = self.read_line(&mut budget)?;
        let words = head
            .strip_prefix(b"-> ")
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .map(|rest| rest.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|w| w.iter().all(|w| !w.is_empty() && w.bytes().all(|b| (33..=126).contains(&b))));
        let Some(mut words) = words else {
            return Err(self.fail("it wrote a line that is not an age plugin command ('-> NAME ARGS…')"));
        };
        let tag = words.remove(0);
        let mut text = Zeroizing::new(Vec::new());
        loop {
            let line = Zeroizing::new(self.read_line(&mut budget)?);
            if line.len() > BODY_COLUMNS {
                return Err(self.fail(format!("the body of its '{tag}' has a line longer than 64 columns")));
            }
            text.extend_from_slice(&line);
            if line.len() < BODY_COLUMNS {
                break;
            }
        }
        let body = B64
            .decode(text.as_slice())
            .map_err(|_| self.fail(format!("the body of its '{tag}' is not canonical base64")))?;
        Ok(Message { tag, args: words, body: Zeroizing::new(body) })
    }

    /// Answers a command of the plugin's phase.
    fn reply(&mut self, answer: Answer) -> Result<(), KeysError> {
        match answer {
            Answer::Ok => self.send("ok", &[], &[]),
            Answer::OkWith(args, body) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.send("ok", &args, &body)
            }
            Answer::Fail => self.send("fail", &[], &[]),
            Answer::Unsupported => self.send("unsupported", &[], &[]),
        }
    }

    /// The plugin's phase: its commands answered through `handle` (the person asked through
    /// `prompt` for `msg`, `confirm`, `request-public`, `request-secret`), until `done`.
    fn plugin_phase(
        &mut self,
        prompt: &dyn PluginPrompt,
        mut handle: impl FnMut(&Message) -> Option<Answer>,
    ) -> Result<(), KeysError> {
        loop {
            let c = self.receive()?;
            let text = || String::from_utf8_lossy(&c.body).into_owned();
            let answer = match c.tag.as_str() {
                "done" => {
                    self.finished = true;
                    return Ok(());
                }
                "msg" => {
                    prompt.message(&text());
                    Answer::Ok
                }
                "confirm" => {
                    let mut labels = c.args.iter().take(2).map(|a| B64.decode(a).ok());
                    match (labels.next(), labels.next()) {
                        (Some(Some(yes)), no @ (None | Some(Some(_)))) => {
                            let yes = String::from_utf8_lossy(&yes).into_owned();
                            let no = no.flatten().map(|n| String::from_utf8_lossy(&n).into_owned());
                            match prompt.confirm(&text(), &yes, no.as_deref()) {
                                Some(v) => Answer::OkWith(
                                    vec![if v { "yes" } else { "no" }.into()],
                                    Zeroizing::new(Vec::new()),
                                ),
                                None => Answer::Fail,
                            }
                        }
                        _ => Answer::Fail,
                    }
                }
                "request-public" => match prompt.public(&text()) {
                    Some(v) => Answer::OkWith(Vec::new(), Zeroizing::new(v.into_bytes())),
                    None => Answer::Fail,
                },
                "request-secret" => match prompt.secret(&text()) {
                    Some(v) => Answer::OkWith(Vec::new(), Zeroizing::new(v.as_bytes().to_vec())),
                    None => Answer::Fail,
                },
                _ => handle(&c).unwrap_or(Answer::Unsupported),
            };
            self.reply(answer)?;
        }
    }
}

impl Drop for Connection {
    /// Closes the pipes and reaps the plugin: one that broke the protocol is killed at once;
    /// one that finished it exits by itself (waited for here up to two seconds, then by a
    /// thread of its own, so that no process is left unreaped).
    fn drop(&mut self) {
        self.input = None;
        self.output = None;
        let Some(mut child) = self.child.take() else { return };
        if self.finished {
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

enum Answer {
    Ok,
    OkWith(Vec<String>, Zeroizing<Vec<u8>>),
    Fail,
    Unsupported,
}

/// An `error` command of the plugin: its message, one line.
fn error_text(c: &Message) -> String {
    let text = String::from_utf8_lossy(&c.body);
    let message = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    let what = c.args.first().map(String::as_str).unwrap_or("internal");
    if message.is_empty() {
        format!("it reported an error ({what})")
    } else {
        message
    }
}

/// `recipient-v1`: the plugin `name` wraps `file_key` for `recipient`. Returns its stanzas
/// and labels.
pub(crate) fn wrap(
    name: &str,
    recipient: &str,
    file_key: &FileKey,
    prompt: &dyn PluginPrompt,
) -> Result<(Vec<AgeStanza>, HashSet<String>), KeysError> {
    let mut conn = Connection::open(name, "recipient-v1")?;
    conn.send("add-recipient", &[recipient], &[])?;
    conn.send("extension-labels", &[], &[])?;
    conn.send("wrap-file-key", &[], file_key.expose_secret())?;
    conn.send("done", &[], &[])?;
    let mut stanzas = Vec::new();
    let mut labels: Option<HashSet<String>> = None;
    let mut errors = Vec::new();
    conn.plugin_phase(prompt, |c| match c.tag.as_str() {
        "recipient-stanza" => {
            match c.args.split_first() {
                Some((index, rest)) if index == "0" && !rest.is_empty() => {
                    stanzas.push(AgeStanza { tag: rest[0].clone(), args: rest[1..].to_vec(), body: c.body.to_vec() })
                }
                _ => errors.push("it wrote a recipient stanza for a file it was not given".to_string()),
            }
            Some(Answer::Ok)
        }
        "labels" => {
            let set: HashSet<String> = c.args.iter().cloned().collect();
            if labels.is_some() || set.len() != c.args.len() {
                errors.push("it sent its labels twice, or a label twice".to_string());
            }
            labels = Some(set);
            Some(Answer::Ok)
        }
        "error" => {
            errors.push(error_text(c));
            Some(Answer::Ok)
        }
        _ => None,
    })?;
    match (stanzas.is_empty(), errors.is_empty()) {
        (false, true) => Ok((stanzas, labels.unwrap_or_default())),
        (true, true) => Err(conn.fail("it returned no recipient stanza and no error")),
        _ => Err(conn.fail(errors.join("; "))),
    }
}

/// `identity-v1`: the plugin `name` unwraps one of `stanzas` (one age file's) with
/// `identities`. `Ok(None)`: none is for them.
pub(crate) fn unwrap(
    name: &str,
    identities: &[String],
    stanzas: &[AgeStanza],
    prompt: &dyn PluginPrompt,
) -> Result<Option<FileKey>, KeysError> {
    let mut conn = Connection::open(name, "identity-v1")?;
    for id in identities {
        conn.send("add-identity", &[id], &[])?;
    }
    for s in stanzas {
        let args: Vec<&str> = ["0", s.tag.as_str()].into_iter().chain(s.args.iter().map(String::as_str)).collect();
        conn.send("recipient-stanza", &args, &s.body)?;
    }
    conn.send("done", &[], &[])?;
    let mut file_key: Option<FileKey> = None;
    let mut errors = Vec::new();
    conn.plugin_phase(prompt, |c| match c.tag.as_str() {
        "file-key" => {
            if c.args.len() == 1 && c.args[0] == "0" && file_key.is_none() && c.body.len() == FILE_KEY_BYTES {
                file_key = Some(FileKey::init_with_mut(|k| k.copy_from_slice(&c.body)));
                Some(Answer::Ok)
            } else {
                Some(Answer::Fail)
            }
        }
        "error" => {
            errors.push(error_text(c));
            Some(Answer::Ok)
        }
        _ => None,
    })?;
    match file_key {
        Some(k) => Ok(Some(k)),
        None if errors.is_empty() => Ok(None),
        None => Err(conn.fail(errors.join("; "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_path_entries_are_searched() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("age-plugin-probe");
        std::fs::write(&plugin, "#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let abs = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert_eq!(find_plugin_in("probe", &abs), Some(plugin.clone()));
        // Relative entries, even when they would reach the plugin from here.
        let rel = pathdiff(dir.path());
        let relative = std::env::join_paths([Path::new(""), Path::new("."), rel.as_path()]).unwrap();
        assert_eq!(find_plugin_in("probe", &relative), None);
        // Names that are not plain names are never looked up.
        for bad in ["", "../probe", "a/b", "probe "] {
            assert_eq!(find_plugin_in(bad, &abs), None, "{bad:?}");
        }
        // A file that is not executable is not a plugin.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(find_plugin_in("probe", &abs), None);
        }
    }

    /// `dir` as a path relative to the current directory (through `..` up to the root).
    fn pathdiff(dir: &Path) -> PathBuf {
        let cwd = std::env::current_dir().unwrap();
        let up = cwd.components().count() - 1;
        let mut p = PathBuf::new();
        for _ in 0..up {
            p.push("..");
        }
        p.join(dir.strip_prefix("/").unwrap())
    }
}
