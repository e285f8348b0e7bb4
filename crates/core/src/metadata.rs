//! The names a protection goes by in a model (docs/format.md §1): the `metadata_props`
//! keys of the `onnx-protect/` namespace, the base64 alphabet of an entry's value and the
//! `tool` string both formats record.

/// Every key this project writes starts with this prefix.
pub const METADATA_PREFIX: &str = "onnx-protect/";

/// Whether a metadata key names an onnx-protect manifest: `onnx-protect/v` followed
/// by decimal digits and nothing else (docs/format.md §1). Other keys in the
/// `onnx-protect/` namespace (such as input-transform records) are not manifests.
pub fn is_manifest_key(key: &str) -> bool {
    key.strip_prefix("onnx-protect/v").is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// The base64 of manifest entry values: the standard alphabet, padded (docs/format.md §1).
pub(crate) fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The `tool` field of a manifest written by this version.
pub(crate) fn tool_name() -> String {
    format!("onnx-protect {}", env!("CARGO_PKG_VERSION"))
}
