//! age plugin recipients and identities (docs/keys.md#age-plugins): `age1NAME1…` and
//! `AGE-PLUGIN-NAME-1…` strings handled by the program `age-plugin-NAME` on `PATH` through
//! the age plugin protocol (the `age` crate's `plugin` feature), so hardware tokens
//! (age-plugin-yubikey, age-plugin-tpm, age-plugin-se) protect models with no code here
//! per device kind.
//!
//! An `age-plugin` stanza (docs/format.md §8) holds a binary age file whose recipient
//! stanzas the plugin wrote and whose payload is the tier's data key; its label is the
//! recipient string.

use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::Arc;

use age::secrecy::SecretString;
use zeroize::Zeroizing;

use crate::error::KeysError;
use crate::stanza::{Provider, Stanza, Wrapped};

/// Stanza kind of an age plugin recipient.
pub const KIND_AGE_PLUGIN: &str = "age-plugin";
/// The largest `age-plugin` stanza body read or written.
pub const MAX_PLUGIN_BODY: usize = 16 * 1024;

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

#[derive(Clone)]
struct Callbacks(Arc<dyn PluginPrompt>);

impl age::Callbacks for Callbacks {
    fn display_message(&self, message: &str) {
        self.0.message(message);
    }

    fn confirm(&self, message: &str, yes_string: &str, no_string: Option<&str>) -> Option<bool> {
        self.0.confirm(message, yes_string, no_string)
    }

    fn request_public_string(&self, description: &str) -> Option<String> {
        self.0.public(description)
    }

    fn request_passphrase(&self, description: &str) -> Option<SecretString> {
        self.0.secret(description).map(|s| SecretString::from(s.to_string()))
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
        let plugin = age::plugin::RecipientPluginV1::new(
            name,
            std::slice::from_ref(&self.recipient),
            &[],
            Callbacks(self.prompt.clone()),
        )
        .map_err(|e| err(&e))?;
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&plugin as &dyn age::Recipient)).map_err(|e| err(&e))?;
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
        let err = |e: &dyn std::fmt::Display| provider_err(&self.name, e);
        let plugin = age::plugin::IdentityPluginV1::new(&self.name, &self.identities, Callbacks(self.prompt.clone()))
            .map_err(|e| err(&e))?;
        let mut reader = match dec.decrypt(std::iter::once(&plugin as &dyn age::Identity)) {
            Ok(r) => r,
            Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
            Err(
                e @ (age::DecryptError::MissingPlugin { .. } | age::DecryptError::Plugin(_) | age::DecryptError::Io(_)),
            ) => return Err(err(&e)),
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
