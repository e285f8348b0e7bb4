//! onnx-protect-proto
