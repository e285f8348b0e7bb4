//! Errors of this crate: why a licence does not let a model open.

/// Why a licence was refused. Each refusal the loaders report has its own variant (and
/// exit code in the binary); messages name what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LicenceError {
    /// The text is not a well-formed licence (`line` 0: the text as a whole).
    #[error("licence line {line}: {reason}")]
    Malformed {
        /// 1-based line number, 0 for the whole text.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The model needs a licence of its authority and none was given.
    #[error("licence required: this model opens only with a licence signed by {authority}, and none was given")]
    Missing {
        /// The model's licence authority (`onnx-protect-signer1…`).
        authority: String,
    },
    /// The signature does not verify, or it is from another authority than the model's.
    #[error("licence: bad signature: {reason}")]
    BadSignature {
        /// Which.
        reason: String,
    },
    /// The licence names other models.
    #[error("licence: wrong model: it names {named}, this model is {model}")]
    WrongModel {
        /// What the licence names.
        named: String,
        /// What this model is (its content digest and model id).
        model: String,
    },
    /// The licence is for other recipients or devices than the one that opened the model.
    #[error("licence: wrong device: it is for {named}, the model was opened by {opener}")]
    WrongDevice {
        /// What the licence names.
        named: String,
        /// The stanza that opened the model (kind and label).
        opener: String,
    },
    /// The validity window has not started.
    #[error("licence: not yet valid: its validity starts at {not_before}, the time is {now}")]
    NotYetValid {
        /// Its `not-before`.
        not_before: String,
        /// The time it was checked at.
        now: String,
    },
    /// The validity window has ended.
    #[error("licence: expired at {not_after}, the time is {now}")]
    Expired {
        /// Its `not-after`.
        not_after: String,
        /// The time it was checked at.
        now: String,
    },
    /// The system clock is behind a time this machine already reached.
    #[error("licence: the system clock ({now}) is behind a time already reached on this machine ({floor}, by {witness}): set the clock right")]
    ClockSetBack {
        /// The system clock.
        now: String,
        /// The earliest the time can be.
        floor: String,
        /// What showed it: the recorded high-water mark or the TPM's clock.
        witness: &'static str,
    },
    /// The clock state file could not be read or written.
    #[error("licence clock state {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}
