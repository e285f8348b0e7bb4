//! onnx-protect-select
