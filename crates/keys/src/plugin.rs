//! age plugin recipients and identities (docs/keys.md#age-plugins): `age1NAME1…` and
//! `AGE-PLUGIN-NAME-1…` strings (parsed by the `age` crate's `plugin` feature) handled by
//! the program `age-plugin-NAME` on `PATH` through the age plugin protocol, so hardware tokens
//! (age-plugin-yubikey, age-plugin-tpm, age-plugin-se) protect models with no code here
//! per device kind.
//!
//! The protocol's client is this crate's own (`plugin_protocol`): it reads what a
//! plugin writes within limits ([`MAX_PLUGIN_LINE`](crate::MAX_PLUGIN_LINE),
//! [`MAX_PLUGIN_COMMAND`](crate::MAX_PLUGIN_COMMAND)) and looks plugins up in `PATH`'s
//! absolute directories only ([`find_plugin_in`](crate::find_plugin_in)).
//!
//! An `age-plugin` stanza (docs/format.md §8) holds a binary age file whose recipient
//! stanzas the plugin wrote and whose payload is the tier's data key; its label is the
//! recipient string.

use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::Arc;

use age_core::format::{FileKey, Stanza as AgeStanza};
use std::collections::HashSet;
use zeroize::Zeroizing;

use crate::error::KeysError;
use crate::stanza::{Provider, Stanza, Wrapped};

/// Stanza kind of an age plugin recipient.
pub const KIND_AGE_PLUGIN: &str = "age-plugin";
/// The largest `age-plugin` stanza body read or written.
pub const MAX_PLUGIN_BODY: usize = 16 * 1024;

pub use crate::plugin_protocol::{NoPrompt, PluginPrompt};

/// An age `Recipient` that wraps through the plugin, keeping the plugin's error (age's
/// error types cannot carry it).
struct Wrapper<'a> {
    name: &'a str,
    recipient: String,
    prompt: &'a dyn PluginPrompt,
    error: std::sync::Mutex<Option<KeysError>>,
}

impl age::Recipient for Wrapper<'_> {
    fn wrap_file_key(&self, file_key: &FileKey) -> Result<(Vec<AgeStanza>, HashSet<String>), age::EncryptError> {
        crate::plugin_protocol::wrap(self.name, &self.recipient, file_key, self.prompt).map_err(|e| {
            let text = e.to_string();
            *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            age::EncryptError::Io(std::io::Error::other(text))
        })
    }
}

/// An age `Identity` that unwraps through the plugin, keeping the plugin's error.
struct Unwrapper<'a> {
    name: &'a str,
    identities: Vec<String>,
    prompt: &'a dyn PluginPrompt,
    error: std::sync::Mutex<Option<KeysError>>,
}

impl age::Identity for Unwrapper<'_> {
    fn unwrap_stanza(&self, stanza: &AgeStanza) -> Option<Result<FileKey, age::DecryptError>> {
        self.unwrap_stanzas(std::slice::from_ref(stanza))
    }

    /// The whole file's stanzas go to the plugin at once, as the protocol has it.
    fn unwrap_stanzas(&self, stanzas: &[AgeStanza]) -> Option<Result<FileKey, age::DecryptError>> {
        match crate::plugin_protocol::unwrap(self.name, &self.identities, stanzas, self.prompt) {
            Ok(k) => k.map(Ok),
            Err(e) => {
                let text = e.to_string();
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Some(Err(age::DecryptError::Io(std::io::Error::other(text))))
            }
        }
    }
}

/// Whether `text` looks like a plugin recipient (`age1NAME1…`), not an X25519 one (`age1…`).
pub fn is_plugin_recipient(text: &str) -> bool {
    age::plugin::Recipient::from_str(text.trim()).is_ok()
}

/// A recipient handled by a plugin: wraps data keys through `age-plugin-NAME`.
pub struct PluginRecipient {
    recipient: age::plugin::Recipient,
    prompt: Arc<dyn PluginPrompt>,
}

impl PluginRecipient {
    /// Parses `age1NAME1…`.
    pub fn parse(text: &str, prompt: Arc<dyn PluginPrompt>) -> Result<PluginRecipient, KeysError> {
        let t = text.trim();
        let recipient = age::plugin::Recipient::from_str(t).map_err(|e| KeysError::BadRecipient {
            text: t.to_string(),
            reason: format!("not an age plugin recipient (age1NAME1…): {e}"),
        })?;
        Ok(PluginRecipient { recipient, prompt })
    }

    /// The plugin's name (`NAME` of `age-plugin-NAME`).
    pub fn plugin(&self) -> &str {
        self.recipient.plugin()
    }
}

fn provider_err(name: &str, e: &dyn std::fmt::Display) -> KeysError {
    // age's messages span lines (a hint follows) and wrap names in Unicode isolation marks
    // (U+2068, U+2069); reports and errors are one plain line.
    let text: String = e.to_string().chars().filter(|c| !matches!(c, '\u{2068}' | '\u{2069}')).collect();
    let reason = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    KeysError::Provider { provider: format!("age-plugin-{name}"), reason }
}

impl Provider for PluginRecipient {
    fn kind(&self) -> &str {
        KIND_AGE_PLUGIN
    }

    fn describe(&self) -> String {
        self.recipient.to_string()
    }

    fn wrap(&self, _tier: u32, data_key: &[u8; 32]) -> Result<Wrapped, KeysError> {
        let name = self.recipient.plugin();
        let err = |e: &dyn std::fmt::Display| provider_err(name, e);
        let plugin = Wrapper {
            name,
            recipient: self.recipient.to_string(),
            prompt: self.prompt.as_ref(),
            error: std::sync::Mutex::new(None),
        };
        let failed = |e: &dyn std::fmt::Display| match plugin.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => e,
            None => err(e),
        };
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&plugin as &dyn age::Recipient)).map_err(|e| failed(&e))?;
        let mut body = Vec::with_capacity(512);
        let mut w = enc.wrap_output(&mut body).map_err(|e| err(&e))?;
        w.write_all(data_key).map_err(|e| err(&e))?;
        w.finish().map_err(|e| err(&e))?;
        if body.len() > MAX_PLUGIN_BODY {
            return Err(err(&format!("its age file has {} bytes ({MAX_PLUGIN_BODY} at most)", body.len())));
        }
        Ok(Wrapped { body, label: self.recipient.to_string() })
    }

    fn unwrap(&self, _stanza: &Stanza) -> Result<Option<Zeroizing<[u8; 32]>>, KeysError> {
        Ok(None)
    }
}

/// Identities of one plugin (`AGE-PLUGIN-NAME-1…`): open `age-plugin` stanzas whose label
/// is a recipient of that plugin, through `age-plugin-NAME`.
pub struct PluginIdentity {
    name: String,
    identities: Vec<age::plugin::Identity>,
    prompt: Arc<dyn PluginPrompt>,
}

impl PluginIdentity {
    /// Parses the `AGE-PLUGIN-…` lines of an identity file (blank lines and `#` comments
    /// ignored; other lines refused), one [`PluginIdentity`] per plugin named. Errors name
    /// the line, never its text.
    pub fn parse_file(text: &str, prompt: Arc<dyn PluginPrompt>) -> Result<Vec<PluginIdentity>, KeysError> {
        let mut out: Vec<PluginIdentity> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let id = age::plugin::Identity::from_str(l).map_err(|e| KeysError::BadIdentity {
                line: i + 1,
                reason: format!("not an age plugin identity (AGE-PLUGIN-NAME-1…): {e}"),
            })?;
            match out.iter_mut().find(|p| p.name == id.plugin()) {
                Some(p) => p.identities.push(id),
                None => out.push(PluginIdentity {
                    name: id.plugin().to_string(),
                    identities: vec![id],
                    prompt: prompt.clone(),
                }),
            }
        }
        if out.is_empty() {
            return Err(KeysError::BadIdentity { line: 0, reason: "no AGE-PLUGIN- identity in the file".into() });
        }
        Ok(out)
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.name
    }

    fn is_for_us(&self, label: &str) -> bool {
        age::plugin::Recipient::from_str(label).is_ok_and(|r| r.plugin() == self.name)
    }
}

impl Provider for PluginIdentity {
    fn kind(&self) -> &str {
        KIND_AGE_PLUGIN
    }

    fn describe(&self) -> String {
        format!("age-plugin-{} identity", self.name)
    }

    fn wrap(&self, _tier: u32, _data_key: &[u8; 32]) -> Result<Wrapped, KeysError> {
        Err(provider_err(&self.name, &"an identity does not name its recipient: wrap for the age1… recipient"))
    }

    /// A stanza whose label is not a recipient of this plugin is skipped without running
    /// it; a body that is not an age file does not open; a plugin that is missing, fails
    /// or dies is an error.
    fn unwrap(&self, stanza: &Stanza) -> Result<Option<Zeroizing<[u8; 32]>>, KeysError> {
        if stanza.kind != KIND_AGE_PLUGIN || !self.is_for_us(&stanza.label) || stanza.body.len() > MAX_PLUGIN_BODY {
            return Ok(None);
        }
        let Ok(dec) = age::Decryptor::new_buffered(stanza.body.as_slice()) else { return Ok(None) };
        if dec.is_scrypt() {
            return Ok(None);
        }
        let plugin = Unwrapper {
            name: &self.name,
            identities: self.identities.iter().map(ToString::to_string).collect(),
            prompt: self.prompt.as_ref(),
            error: std::sync::Mutex::new(None),
        };
        let mut reader = match dec.decrypt(std::iter::once(&plugin as &dyn age::Identity)) {
            Ok(r) => r,
            // The plugin failed, died or broke the protocol: its error.
            Err(_) if plugin.error.lock().unwrap_or_else(|p| p.into_inner()).is_some() => {
                return Err(plugin
                    .error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_else(|| provider_err(&self.name, &"failed")));
            }
            // Not for these identities, or a body that does not open (changed).
            Err(_) => return Ok(None),
        };
        let mut plain = Zeroizing::new(Vec::with_capacity(33));
        if reader.by_ref().take(33).read_to_end(&mut plain).is_err() {
            return Ok(None);
        }
        let bytes: Option<[u8; 32]> = plain.as_slice().try_into().ok();
        Ok(bytes.map(Zeroizing::new))
    }
}
