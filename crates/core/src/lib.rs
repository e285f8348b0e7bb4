//! onnx-protect-core
