//! onnx-protect-crypto
