//! onnx-protect-format
