//! Runs a model protected by onnx-protect in onnxruntime from Rust (the `ort` crate),
//! decrypted in memory with its large weights used in place; nothing is written to disk.
//!
//!     onnx-protect keygen -o model.key
//!     onnx-protect encrypt model.onnx -o protected.onnx --key-file model.key
//!     cargo run -p onnx-protect-ort --example protected_session -- protected.onnx model.key
//!
//! libonnxruntime is the one the onnxruntime Python wheel ships (`pip install
//! onnxruntime`), or the file `ORT_DYLIB_PATH` names. The example feeds zeros of each
//! float input's shape (dynamic dimensions 1) and prints each output's shape and first
//! values.

use std::path::Path;
use std::process::ExitCode;

use onnx_protect_ort::{commit_from_file, environment, key_file};
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, key] = args.as_slice() else {
        eprintln!("usage: protected_session PROTECTED.onnx KEY_FILE");
        return ExitCode::from(2);
    };
    match run(Path::new(model), Path::new(key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(model: &Path, key: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let env = environment()?;
    let key = key_file(key)?;
    let mut session = commit_from_file(Session::builder(&env)?, model, &key)?;
    println!(
        "{}: {} initializers ({} bytes) used in place",
        model.display(),
        session.shared_initializers(),
        session.shared_bytes()
    );
    let mut feeds: Vec<(String, SessionInputValue<'_>)> = Vec::new();
    for input in session.inputs() {
        let ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } = input.dtype() else {
            return Err(format!("input {} is not a float tensor; this example feeds float zeros", input.name()).into());
        };
        let dims: Vec<i64> = shape.iter().map(|&d| d.max(1)).collect();
        let n = dims.iter().product::<i64>() as usize;
        feeds.push((input.name().to_string(), Tensor::from_array((dims, vec![0f32; n]))?.into()));
    }
    let outputs = session.run(feeds)?;
    for (name, value) in outputs.iter() {
        match value.try_extract_tensor::<f32>() {
            Ok((shape, data)) => println!("{name}: shape {shape:?}, first values {:?}", &data[..data.len().min(5)]),
            Err(_) => println!("{name}: {:?}", value.dtype()),
        }
    }
    Ok(())
}
