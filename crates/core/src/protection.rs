//! A protected model's entry, read once, in the format it was written in: every verb
//! matches on [`Protection`] once and passes the parsed value on (as age's `Header`
//! does), instead of asking for the format version and reading the entry again.

use onnx_protect_format::Model;

use crate::envelope::{manifest_version, ProtectedV2};
use crate::error::{CoreError, Result};
use crate::manifest::{read_protected, Protected};

/// The protection of a model, decoded, validated and matched to the model.
pub(crate) enum Protection {
    /// Format 2 (docs/format.md), which every encryption writes.
    V2(ProtectedV2),
    /// Format 1 (docs/format.md Appendix B), read only.
    V1(Protected),
}

impl Protection {
    /// The protection of `model`; `None` if it is not protected.
    pub(crate) fn read(model: &Model) -> Result<Option<Protection>> {
        Ok(match manifest_version(model)? {
            None => None,
            Some(2) => Some(Protection::V2(crate::format2::read_v2(model)?)),
            Some(_) => Some(Protection::V1(read_protected(model)?)),
        })
    }

    /// The protection of a model that must be protected ([`CoreError::NotProtected`]).
    pub(crate) fn of(model: &Model) -> Result<Protection> {
        Self::read(model)?.ok_or(CoreError::NotProtected)
    }

    /// The format-2 entry of a model that `operation` (a past participle: "signed")
    /// rewrites: format 1 is [`CoreError::ReadOnlyFormat`].
    pub(crate) fn writable(model: &Model, operation: &'static str) -> Result<ProtectedV2> {
        match Self::of(model)? {
            Protection::V2(p) => Ok(p),
            Protection::V1(_) => Err(CoreError::ReadOnlyFormat { version: 1, operation }),
        }
    }
}
