//! Exit codes and hints, chosen from the typed kinds of the library errors
//! (normative list in `docs/cli.md`, and in `--help`).

use std::error::Error;

use onnx_protect_batch::{BatchError, BatchErrorKind, FileError, FileErrorKind};
use onnx_protect_core::error::{CoreError, ErrorKind as CoreKind};
use onnx_protect_format::{ErrorKind as FormatKind, FormatError};
use onnx_protect_transform::{ErrorKind as TransformKind, TransformError};

/// Success.
pub const OK: u8 = 0;
/// Any failure not listed below (I/O, an error of the binary itself).
pub const FAILURE: u8 = 1;
/// Command-line usage error: clap's own, or a bad combination or value found after parsing.
pub const USAGE: u8 = 2;
/// The input model (or its external data) is invalid, unsafe to read, or not an ONNX model.
pub const BAD_MODEL: u8 = 3;
/// The key is wrong, missing or unreadable.
pub const KEY: u8 = 4;
/// Integrity failure: the manifest or encrypted bytes were modified.
pub const MODIFIED: u8 = 5;
/// The model is in the wrong state (already protected, not protected, unknown format version).
pub const STATE: u8 = 6;
/// The policy file or an override is invalid.
pub const POLICY: u8 = 7;
/// `check`: a model fails the CI gate (not protected, or weaker than the policy asks).
pub const GATE: u8 = 8;
/// `trace`: no recipient's fingerprint reaches the threshold.
pub const NOT_TRACED: u8 = 9;
/// The model needs a licence: none given, or the licence text is malformed or unreadable.
pub const LICENCE_MISSING: u8 = 10;
/// The licence's signature does not verify, or it is from another authority.
pub const LICENCE_BAD_SIGNATURE: u8 = 11;
/// The licence has expired.
pub const LICENCE_EXPIRED: u8 = 12;
/// The licence is not valid yet.
pub const LICENCE_NOT_YET_VALID: u8 = 13;
/// The licence names other models.
pub const LICENCE_WRONG_MODEL: u8 = 14;
/// The licence is for another recipient or device.
pub const LICENCE_WRONG_DEVICE: u8 = 15;
/// The system clock is behind a time already reached (or the recorded clock state is unusable).
pub const LICENCE_CLOCK: u8 = 16;

/// The exit codes as `--help` lists them (after the options). docs/cli.md has the same
/// table; a test keeps the two equal.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  any other failure (I/O, a file that cannot be read or written)
  2  usage error: unknown option, missing argument, or a bad value or combination
  3  bad model: not an ONNX model, damaged, or unsafe external data
  4  key problem: wrong key, unreadable key file, missing key variable
  5  integrity failure: the manifest or an encrypted byte was modified
  6  wrong state: already protected, not protected, unsupported format version
  7  invalid policy or policy override
  8  check: a model fails the CI gate
  9  trace: no recipient's fingerprint found
 10  licence required: none given, or malformed
 11  licence: bad signature, or another authority's
 12  licence expired
 13  licence not yet valid
 14  licence for another model
 15  licence for another recipient or device
 16  licence: the clock is set back (or its recorded state is unusable)";

/// A usage error found after argument parsing: a bad value or combination (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A key or passphrase that could not be read (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyFileError(pub String);

/// Reports an error of clap's (an unknown option, a missing or bad value) as every
/// other error is reported: one `error:` line (clap's message, with the items it lists
/// below it joined to it) and a `hint:` line (clap's tip, or the command's usage), exit
/// 2. `--help` and `--version` print as clap prints them.
pub fn clap_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    let (line, hint) = one_line(&e.render().to_string());
    eprintln!("{line}");
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
    std::process::ExitCode::from(USAGE)
}

/// clap's rendered error as (the `error:` line, a hint): the lines indented below the
/// first are joined to it, `tip:` becomes the hint, else `Usage:` does.
fn one_line(text: &str) -> (String, Option<String>) {
    let mut lines = text.lines();
    let mut line = lines.next().unwrap_or("error: invalid arguments").trim_end().to_string();
    let (mut tip, mut usage) = (None, None);
    let mut items = Vec::new();
    for l in lines {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("tip: ") {
            tip.get_or_insert_with(|| rest.to_string());
        } else if let Some(rest) = t.strip_prefix("Usage: ") {
            usage.get_or_insert_with(|| format!("usage: {rest} (--help for more)"));
        } else if !t.is_empty() && !t.starts_with("For more information") && tip.is_none() && usage.is_none() {
            items.push(t.to_string());
        }
    }
    if !items.is_empty() {
        line = format!("{}: {}", line.trim_end_matches(':'), items.join(", "));
    }
    (line, tip.or(usage))
}

/// Returns early with a [`UsageError`] built like `format!`.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::exit::UsageError(format!($($arg)*)).into())
    };
}
pub(crate) use usage;

/// A bundle's verification failure is an integrity failure; an unusable key a key
/// problem; a model path that is a link or a special file a bad model.
fn bundle_code(e: &onnx_protect_bundle::BundleError) -> u8 {
    use onnx_protect_bundle::BundleError as B;
    match e {
        _ if e.is_verification_failure() => MODIFIED,
        B::Key { .. } => KEY,
        B::Unsupported(_) => STATE,
        B::NotAModelFile { .. } => BAD_MODEL,
        _ => FAILURE,
    }
}

/// The exit code of an error: that of the first cause in its chain that has a typed
/// kind; [`FAILURE`] for errors of the binary itself (I/O with context, ...).
pub fn code_for(e: &anyhow::Error) -> u8 {
    e.chain().find_map(code_of).unwrap_or(FAILURE)
}

/// [`code_for`] of a library error.
pub fn code_for_error(e: &(dyn Error + 'static)) -> u8 {
    std::iter::successors(Some(e), |&c| c.source()).find_map(code_of).unwrap_or(FAILURE)
}

/// The code of one cause, if it is one of the typed errors.
fn code_of(cause: &(dyn Error + 'static)) -> Option<u8> {
    if cause.is::<UsageError>() {
        return Some(USAGE);
    }
    if cause.is::<KeyFileError>() || cause.is::<onnx_protect_crypto::CryptoError>() {
        return Some(KEY);
    }
    if cause.is::<onnx_protect_select::PolicyError>() {
        return Some(POLICY);
    }
    if let Some(f) = cause.downcast_ref::<FormatError>() {
        return Some(format_code(f.kind()));
    }
    if let Some(t) = cause.downcast_ref::<TransformError>() {
        return Some(transform_code(t.kind()));
    }
    if let Some(l) = cause.downcast_ref::<onnx_protect_licence::LicenceError>() {
        return Some(licence_code(onnx_protect_core::error::LicenceKind::of(l)));
    }
    if let Some(c) = cause.downcast_ref::<CoreError>() {
        return Some(core_code(c.kind()).unwrap_or(FAILURE));
    }
    #[cfg(feature = "tract")]
    if let Some(r) = cause.downcast_ref::<onnx_protect_runtime::RuntimeError>() {
        return runtime_code(r);
    }
    if let Some(b) = cause.downcast_ref::<onnx_protect_bundle::BundleError>() {
        return Some(bundle_code(b));
    }
    if let Some(t) = cause.downcast_ref::<onnx_protect_trace::TraceError>() {
        return Some(trace_code(t));
    }
    if let Some(b) = cause.downcast_ref::<BatchError>() {
        return Some(match b.kind() {
            BatchErrorKind::Options => USAGE,
            BatchErrorKind::Inputs | BatchErrorKind::Io => FAILURE,
        });
    }
    if let Some(f) = cause.downcast_ref::<FileError>() {
        return match f.kind() {
            // The core, bundle or folder error is the next cause in the chain.
            FileErrorKind::Core | FileErrorKind::Bundle | FileErrorKind::Folder => None,
            FileErrorKind::SharedOutput | FileErrorKind::Io => Some(FAILURE),
            FileErrorKind::FolderOperation => Some(USAGE),
        };
    }
    if let Some(f) = cause.downcast_ref::<onnx_protect_folder::FolderError>() {
        return folder_code(f.kind());
    }
    None
}

/// The exit code of a kind of folder error; `None` for a model's own error, the next
/// cause in the chain (a folder's models are refused as a model alone is).
fn folder_code(kind: onnx_protect_folder::ErrorKind) -> Option<u8> {
    use onnx_protect_folder::ErrorKind as K;
    Some(match kind {
        K::Model => return None,
        K::Modified => MODIFIED,
        K::Invalid => BAD_MODEL,
        K::Options => USAGE,
        K::Io | K::Output => FAILURE,
        _ => FAILURE,
    })
}

fn format_code(k: FormatKind) -> u8 {
    match k {
        FormatKind::Io => FAILURE,
        // Only a model given as a stream (`-`) has no directory: give its path instead.
        FormatKind::ExternalWithoutDir => USAGE,
        FormatKind::NotOnnx
        | FormatKind::Truncated
        | FormatKind::Malformed
        | FormatKind::NoGraph
        | FormatKind::NegativeDim
        | FormatKind::DimOverflow
        | FormatKind::DataLength
        | FormatKind::UnknownDataType
        | FormatKind::TooDeep
        | FormatKind::DuplicateName
        | FormatKind::ExternalPath
        | FormatKind::ExternalRange
        | FormatKind::ExternalMissing
        | FormatKind::Invalid => BAD_MODEL,
    }
}

fn trace_code(e: &onnx_protect_trace::TraceError) -> u8 {
    use onnx_protect_trace::TraceError as T;
    match e {
        T::Secret { .. } | T::Key(_) | T::LedgerEmpty { .. } => KEY,
        T::Model { source, .. } => format_code(source.kind()),
        T::NoCommonWeights { .. } => BAD_MODEL,
        T::RecipientId { .. } | T::Parameter(_) => USAGE,
        _ => FAILURE,
    }
}

fn transform_code(k: TransformKind) -> u8 {
    match k {
        TransformKind::State => STATE,
        TransformKind::Format(f) => format_code(f),
        TransformKind::Crypto => KEY,
        TransformKind::Spec
        | TransformKind::Shape
        | TransformKind::OutOfRange
        | TransformKind::Npy
        | TransformKind::Image
        | TransformKind::Io
        | TransformKind::NoPatchEmbedding
        | TransformKind::CannotAbsorb
        | TransformKind::Unsupported => FAILURE,
    }
}

/// The exit code of a kind of core error. Every kind is listed; `None` only for a kind
/// a newer core adds (its kind enum is non-exhaustive) before it is listed here: a
/// test over `ErrorKind::ALL` fails until it is.
fn core_code(kind: CoreKind) -> Option<u8> {
    Some(match kind {
        CoreKind::WrongKey | CoreKind::Key => KEY,
        CoreKind::Modified | CoreKind::BadManifest | CoreKind::NotSigned => MODIFIED,
        CoreKind::AlreadyProtected
        | CoreKind::NotProtected
        | CoreKind::UnsupportedVersion
        | CoreKind::AlreadyDecrypted => STATE,
        CoreKind::Policy => POLICY,
        CoreKind::Io | CoreKind::Output | CoreKind::Internal => FAILURE,
        CoreKind::Model(f) => format_code(f),
        CoreKind::Licence(l) => licence_code(l),
        _ => return None,
    })
}

/// The exit code of a licence refusal (10 to 16).
pub fn licence_code(kind: onnx_protect_core::error::LicenceKind) -> u8 {
    use onnx_protect_core::error::LicenceKind as L;
    match kind {
        L::BadSignature => LICENCE_BAD_SIGNATURE,
        L::Expired => LICENCE_EXPIRED,
        L::NotYetValid => LICENCE_NOT_YET_VALID,
        L::WrongModel => LICENCE_WRONG_MODEL,
        L::WrongDevice => LICENCE_WRONG_DEVICE,
        L::Clock => LICENCE_CLOCK,
        _ => LICENCE_MISSING,
    }
}

#[cfg(feature = "tract")]
fn runtime_code(r: &onnx_protect_runtime::RuntimeError) -> Option<u8> {
    use onnx_protect_runtime::ErrorKind as RuntimeKind;
    match r.kind() {
        RuntimeKind::Core(k) => core_code(k),
        RuntimeKind::Format(f) => Some(format_code(f)),
        RuntimeKind::UnsupportedOp | RuntimeKind::Runtime | RuntimeKind::Input | RuntimeKind::Npy | RuntimeKind::Io => {
            Some(FAILURE)
        }
    }
}

/// The format error behind a cause, wherever a library wrapped it.
fn format_error<'a>(cause: &'a (dyn Error + 'static)) -> Option<&'a FormatError> {
    if let Some(f) = cause.downcast_ref::<FormatError>() {
        return Some(f);
    }
    if let Some(CoreError::Format(f)) = cause.downcast_ref::<CoreError>() {
        return Some(f);
    }
    if let Some(TransformError::Format(f)) = cause.downcast_ref::<TransformError>() {
        return Some(f);
    }
    #[cfg(feature = "tract")]
    {
        use onnx_protect_runtime::RuntimeError;
        match cause.downcast_ref::<RuntimeError>() {
            Some(RuntimeError::Format(f)) | Some(RuntimeError::Core(CoreError::Format(f))) => return Some(f),
            _ => {}
        }
    }
    None
}

/// An optional hint line for the user.
pub fn hint_for(e: &anyhow::Error) -> Option<&'static str> {
    for cause in e.chain() {
        #[cfg(feature = "tract")]
        if let Some(onnx_protect_runtime::RuntimeError::UnsupportedOps { .. }) =
            cause.downcast_ref::<onnx_protect_runtime::RuntimeError>()
        {
            return Some(
                "onnxruntime runs it: the Python package's InferenceSession opens the protected model, and python3 -m \
                 onnx_protect.assess runs the training attacks (docs/protection.md#training-attacks)",
            );
        }
        if let Some(c) = cause.downcast_ref::<CoreError>() {
            match c.kind() {
                CoreKind::WrongKey => {
                    return Some("check that this is the key (or passphrase) the model was encrypted with")
                }
                CoreKind::AlreadyProtected => {
                    return Some("decrypt the model first, or keep the original unprotected copy")
                }
                _ => {}
            }
        }
        if let Some(f) = format_error(cause) {
            return match f.kind() {
                FormatKind::ExternalPath => Some("external data must be a plain file inside the model's directory"),
                FormatKind::Truncated => Some("the file is incomplete; was the download or copy interrupted?"),
                _ => None,
            };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clap_error_is_one_line_and_a_hint() {
        let missing = "error: the following required arguments were not provided:\n  <INPUT>\n  --tier <TIER>\n\n\
                       Usage: onnx-protect verify <INPUT>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(missing),
            (
                "error: the following required arguments were not provided: <INPUT>, --tier <TIER>".to_string(),
                Some("usage: onnx-protect verify <INPUT> (--help for more)".to_string())
            )
        );
        let unknown = "error: unexpected argument '--bogus' found\n\n  tip: to pass '--bogus' as a value, use \
                       '-- --bogus'\n\nUsage: onnx-protect encrypt [OPTIONS] <INPUT>\n\nFor more information, try \
                       '--help'.\n";
        assert_eq!(
            one_line(unknown),
            (
                "error: unexpected argument '--bogus' found".to_string(),
                Some("to pass '--bogus' as a value, use '-- --bogus'".to_string())
            )
        );
    }

    #[test]
    fn every_core_error_kind_has_an_exit_code() {
        for kind in CoreKind::ALL {
            assert!(core_code(kind).is_some(), "no exit code for the core error kind {kind}");
        }
        assert_eq!(core_code(CoreKind::Model(FormatKind::Truncated)), Some(BAD_MODEL));
        assert_eq!(core_code(CoreKind::Model(FormatKind::Io)), Some(FAILURE));
        assert_eq!(core_code(CoreKind::Io), Some(FAILURE));
    }
}
