//! Key material of the onnx-protect format 2 (docs/format.md §8, §10, docs/keys.md):
//!
//! * [`Recipient`]s a model's data key is wrapped for (a 32-byte key, a passphrase, an
//!   age X25519 recipient, a key [`Provider`]) and the [`Identity`]s that open the
//!   resulting [`Stanza`]s; a wrong key finds no stanza it opens, which callers report as
//!   "wrong key";
//! * publisher signatures: Ed25519 [`SigningKey`]s and [`SignerKey`]s with Bech32 text forms.
//!
//! ```
//! use onnx_protect_crypto::{DataKey, MasterKey};
//! use onnx_protect_keys::{Identity, Recipient};
//!
//! let data_key = DataKey::generate()?;
//! let customer = MasterKey::generate()?;
//! let stanza = Recipient::Key(customer.clone()).wrap(1, &data_key)?;
//! let opened = Identity::Key(customer).unwrap(0, &stanza)?.expect("the right key opens it");
//! assert_eq!(*opened.to_bytes(), *data_key.to_bytes());
//! let stranger = Identity::Key(MasterKey::generate()?);
//! assert!(stranger.unwrap(0, &stanza)?.is_none());
//! # Ok::<(), onnx_protect_keys::KeysError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod command;
mod error;
mod pkcs11;
mod plugin;
mod plugin_protocol;
mod recipient;
mod rules;
mod sign;
mod stanza;

pub use command::{
    KeyCommand, COMMAND_PROTOCOL, DEFAULT_COMMAND_TIMEOUT, KIND_COMMAND, MAX_COMMAND_OUTPUT, MAX_LABEL_LEN,
    MAX_WRAPPED_LEN,
};
pub use error::KeysError;
pub use pkcs11::{Pkcs11Key, Pkcs11Uri, KIND_PKCS11};
pub use plugin::{
    is_plugin_recipient, NoPrompt, PluginIdentity, PluginPrompt, PluginRecipient, KIND_AGE_PLUGIN, MAX_PLUGIN_BODY,
};
pub use plugin_protocol::{find_plugin_in, MAX_PLUGIN_COMMAND, MAX_PLUGIN_LINE};
pub use recipient::{
    check_kdf_limits, new_x25519_identity_file, passphrase_stanza, Identity, Recipient, KIND_KEY, KIND_PASSPHRASE,
    KIND_X25519, MAX_KDF_M_COST_KIB, MAX_KDF_P_COST, MAX_KDF_T_COST, PASSPHRASE_SALT_LEN,
};
pub use rules::{
    check_stanzas, costly_kind, is_known_kind, KIND_TPM, MAX_COSTLY_STANZAS, MAX_KIND_LEN, MAX_STANZA_BODY_LEN,
    MAX_STANZA_LABEL_LEN, MAX_X25519_BODY, TPM_BODY_LEN,
};
pub use sign::{SignerKey, SigningKey, SIGNER_HRP, SIGNING_KEY_HRP};
pub use stanza::{Provider, Stanza, Wrapped};

/// Re-exported so callers can generate and name age identities without depending on `age`.
pub use age::x25519::{Identity as X25519Identity, Recipient as X25519Recipient};
