// The link arguments a Node addon needs on macOS (symbols left to the loading process);
// nothing on Linux.
fn main() {
    napi_build::setup();
}
