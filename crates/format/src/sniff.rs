//! Telling a file that is not an ONNX model from a damaged one.
//!
//! Contract: [`explain`] only rewrites an error the parser already returned
//! (truncated or malformed protobuf, no graph), never turns a parseable model
//! into an error. It replaces the protobuf-level message by
//! [`FormatError::NotOnnx`] when the bytes are plainly something else: empty,
//! a known file type, text, or bytes whose first field is no field of an ONNX
//! `ModelProto`. A real model cut short or damaged after its first field keeps
//! its truncated/malformed error (and so the truncation hint).

use crate::error::FormatError;

/// `ModelProto` field numbers: ir_version, producer_name, producer_version, domain,
/// model_version, doc_string, graph, opset_import, metadata_props, training_info,
/// functions, configuration.
const MODEL_FIELDS: [u64; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25, 26];

/// File signatures (magic bytes at the start) and what they say the file is.
const SIGNATURES: [(&[u8], &str); 11] = [
    (b"\x89PNG\r\n\x1a\n", "it is a PNG image"),
    (b"\xff\xd8\xff", "it is a JPEG image"),
    (b"GIF8", "it is a GIF image"),
    (b"PK\x03\x04", "it is a ZIP archive (PyTorch .pt/.pth checkpoints and .npz files are ZIP archives)"),
    (b"PK\x05\x06", "it is an empty ZIP archive"),
    (b"\x1f\x8b", "it is gzip-compressed; decompress it first"),
    (b"\x93NUMPY", "it is a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "it is an HDF5 file (such as a Keras .h5 model)"),
    (b"%PDF-", "it is a PDF document"),
    (b"\x7fELF", "it is an executable or a shared library (ELF)"),
    (b"\x80\x02", "it looks like a Python pickle (such as an old PyTorch checkpoint)"),
];

/// Bytes examined for the text test.
const TEXT_PROBE: usize = 4096;

/// `err` as the parser returned it for `buf`, or [`FormatError::NotOnnx`] when the
/// bytes are not an ONNX model at all.
pub fn explain(buf: &[u8], err: FormatError) -> FormatError {
    if !matches!(err, FormatError::Truncated { .. } | FormatError::Malformed { .. } | FormatError::NoGraph) {
        return err;
    }
    match not_onnx_reason(buf) {
        Some(reason) => FormatError::NotOnnx { reason },
        None => err,
    }
}

/// Why `buf` is not an ONNX model, if that can be said; `None` for bytes that start
/// like a model.
fn not_onnx_reason(buf: &[u8]) -> Option<String> {
    if buf.is_empty() {
        return Some("the file is empty (0 bytes)".into());
    }
    if let Some((_, what)) = SIGNATURES.iter().find(|(magic, _)| buf.starts_with(magic)) {
        return Some((*what).into());
    }
    if buf.len() > 8 && buf[8] == b'{' && buf[..8].iter().skip(4).all(|&b| b == 0) {
        return Some("it is a safetensors file".into());
    }
    if buf.get(4..8) == Some(b"ORTM") {
        return Some("it is an onnxruntime ORT-format model (protect the .onnx it was converted from)".into());
    }
    if buf.get(4..8) == Some(b"TFL3") {
        return Some("it is a TensorFlow Lite model".into());
    }
    if let Some(start) = text_start(buf) {
        return Some(format!("it is text, starting {start:?}"));
    }
    if !first_field_is_model_field(buf) {
        let hex: Vec<String> = buf.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Some(format!("it does not start like one (first bytes {})", hex.join(" ")));
    }
    None
}

/// The start of the first line when the first bytes are text (UTF-8 without control
/// characters other than tab, line feed, form feed and carriage return).
fn text_start(buf: &[u8]) -> Option<String> {
    let probe = &buf[..buf.len().min(TEXT_PROBE)];
    let text = match std::str::from_utf8(probe) {
        Ok(t) => t,
        // A multi-byte character cut by the probe's end is still text.
        Err(e) if e.error_len().is_none() && probe.len() == TEXT_PROBE => {
            std::str::from_utf8(&probe[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    if text.is_empty() || text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c')) {
        return None;
    }
    let line = text.trim_start().lines().next().unwrap_or("");
    Some(line.chars().take(40).collect())
}

/// Whether the first tag of `buf` is a `ModelProto` field number with a valid wire
/// type. A known number with an unexpected wire type counts: that is a damaged model
/// (the parser says which field), not another kind of file.
fn first_field_is_model_field(buf: &[u8]) -> bool {
    let mut tag: u64 = 0;
    for (i, &b) in buf.iter().take(5).enumerate() {
        tag |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let (number, wire) = (tag >> 3, tag & 7);
            return MODEL_FIELDS.contains(&number) && matches!(wire, 0 | 1 | 2 | 5);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(buf: &[u8]) -> Option<String> {
        match explain(buf, FormatError::NoGraph) {
            FormatError::NotOnnx { reason } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn known_file_types_are_named() {
        assert_eq!(reason(b"").unwrap(), "the file is empty (0 bytes)");
        assert!(reason(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap().contains("PNG"));
        assert!(reason(b"\xff\xd8\xff\xe0\0\x10JFIF").unwrap().contains("JPEG"));
        assert!(reason(b"PK\x03\x04\x14\0\0\0").unwrap().contains("ZIP"));
        assert!(reason(b"\x93NUMPY\x01\0v\0{'descr'").unwrap().contains("NumPy"));
        assert!(reason(b"\x58\0\0\0\0\0\0\0{\"__metadata__\"").unwrap().contains("safetensors"));
        assert!(reason(b"\x14\0\0\0ORTM\x0c\0\x10\0").unwrap().contains("ORT-format"));
    }

    #[test]
    fn text_is_quoted() {
        assert_eq!(reason(b"hello world\nsecond line").unwrap(), "it is text, starting \"hello world\"");
        // Text that happens to begin with a ModelProto tag byte ('B' is opset_import) is still text.
        assert!(reason(b"Bonjour\n").unwrap().starts_with("it is text"));
    }

    #[test]
    fn random_bytes_name_their_first_bytes() {
        assert_eq!(reason(&[0x0f, 0xaa, 0x01]).unwrap(), "it does not start like one (first bytes 0f aa 01)");
    }

    #[test]
    fn a_damaged_model_keeps_its_error() {
        // ir_version = 8, then a graph field cut short: starts like a model, not text.
        let damaged = [0x08, 0x08, 0x3a, 0x80];
        assert!(reason(&damaged).is_none());
        let e = explain(&damaged, FormatError::Truncated { at: 3, context: "ModelProto".into() });
        assert!(matches!(e, FormatError::Truncated { .. }));
        // ir_version with a wrong wire type is a damaged model too.
        assert!(reason(&[0x0d, 8, 0, 0, 0]).is_none());
        // Other errors are never rewritten.
        assert!(matches!(explain(b"", FormatError::Invalid("x".into())), FormatError::Invalid(_)));
    }
}
