//! Running a model held in memory with tract.
//!
//! The model bytes are parsed by tract from memory. Tensors kept in external data
//! files are inlined from buffers the caller provides (keyed by `location`), so a
//! model decrypted in memory runs without any plaintext file. Before tract sees the
//! graph, [`crate::rewrite::for_tract`] replaces what tract 0.21 cannot run (`Gelu`,
//! symbolic dimensions in `value_info`) by equivalents.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{Result, RuntimeError};
use crate::npy::{Dtype, NpyArray};

/// External data files of a model: `location` → file bytes.
pub type External<'a> = BTreeMap<String, &'a [u8]>;

/// One dimension of a model input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Symbolic(String),
}

/// A model input as declared in the graph.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputInfo {
    pub name: String,
    /// `None` when the element type is missing or not one [`Dtype`] covers.
    pub dtype: Option<Dtype>,
    pub dims: Vec<Dim>,
}

/// A model parsed by tract, not yet specialised to input shapes.
pub struct Loaded {
    model: InferenceModel,
    inputs: Vec<InputInfo>,
    outputs: Vec<String>,
}

/// A model optimised for fixed input shapes, ready to run.
pub struct Prepared {
    plan: TypedRunnableModel<TypedModel>,
    inputs: Vec<(String, Dtype, Vec<usize>)>,
    outputs: Vec<String>,
}

/// A tract error with its chain of causes (`{:#}`: "outer: cause: root cause"), so the
/// message names what tract could not do, not only where.
fn tract_err(e: impl std::fmt::Display) -> RuntimeError {
    let msg = format!("{e:#}");
    match unimplemented_in(&msg) {
        Some(op) => RuntimeError::UnsupportedOps { ops: vec![op] },
        None => RuntimeError::Tract(msg),
    }
}

/// Finds `Unimplemented(Op)` in a tract error message.
fn unimplemented_in(msg: &str) -> Option<String> {
    let i = msg.find("Unimplemented(")?;
    let rest = &msg[i + "Unimplemented(".len()..];
    Some(rest[..rest.find(')')?].to_string())
}

/// Runs `f`, turning a panic inside tract into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(RuntimeError::Tract(format!("{what} failed inside tract: {why}")))
        }
    }
}

fn dtype_of_onnx(code: i32) -> Option<Dtype> {
    Some(match code {
        1 => Dtype::F32,
        2 => Dtype::U8,
        3 => Dtype::I8,
        4 => Dtype::U16,
        5 => Dtype::I16,
        6 => Dtype::I32,
        7 => Dtype::I64,
        9 => Dtype::Bool,
        10 => Dtype::F16,
        11 => Dtype::F64,
        12 => Dtype::U32,
        13 => Dtype::U64,
        _ => return None,
    })
}

fn datum_of(d: Dtype) -> DatumType {
    match d {
        Dtype::Bool => DatumType::Bool,
        Dtype::U8 => DatumType::U8,
        Dtype::I8 => DatumType::I8,
        Dtype::U16 => DatumType::U16,
        Dtype::I16 => DatumType::I16,
        Dtype::U32 => DatumType::U32,
        Dtype::I32 => DatumType::I32,
        Dtype::U64 => DatumType::U64,
        Dtype::I64 => DatumType::I64,
        Dtype::F16 => DatumType::F16,
        Dtype::F32 => DatumType::F32,
        Dtype::F64 => DatumType::F64,
    }
}

/// Replaces every external tensor of `g` (and its subgraphs) with its bytes from `ext`.
fn inline_graph(g: &mut pb::GraphProto, ext: &External) -> Result<()> {
    for t in &mut g.initializer {
        inline_tensor(t, ext)?;
    }
    for s in &mut g.sparse_initializer {
        inline_sparse(s, ext)?;
    }
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(t) = &mut a.t {
                inline_tensor(t, ext)?;
            }
            for t in &mut a.tensors {
                inline_tensor(t, ext)?;
            }
            if let Some(s) = &mut a.sparse_tensor {
                inline_sparse(s, ext)?;
            }
            for s in &mut a.sparse_tensors {
                inline_sparse(s, ext)?;
            }
            if let Some(sub) = &mut a.g {
                inline_graph(sub, ext)?;
            }
            for sub in &mut a.graphs {
                inline_graph(sub, ext)?;
            }
        }
    }
    Ok(())
}

fn inline_sparse(s: &mut pb::SparseTensorProto, ext: &External) -> Result<()> {
    if let Some(t) = &mut s.values {
        inline_tensor(t, ext)?;
    }
    if let Some(t) = &mut s.indices {
        inline_tensor(t, ext)?;
    }
    Ok(())
}

fn inline_tensor(t: &mut pb::TensorProto, ext: &External) -> Result<()> {
    if t.data_location != Some(pb::tensor_proto::DataLocation::External as i32) {
        return Ok(());
    }
    let field = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.clone());
    let bad = |why: String| RuntimeError::Input(format!("external tensor '{}': {why}", t.name));
    let location = field("location").ok_or_else(|| bad("no location".into()))?;
    let offset: usize = match field("offset") {
        Some(v) => v.parse().map_err(|_| bad(format!("bad offset '{v}'")))?,
        None => 0,
    };
    let file = ext.get(&location).ok_or_else(|| bad(format!("no data for external file '{location}'")))?;
    let length: usize = match field("length") {
        Some(v) => v.parse().map_err(|_| bad(format!("bad length '{v}'")))?,
        None => file.len().saturating_sub(offset),
    };
    let end = offset.checked_add(length).filter(|&e| e <= file.len());
    let bytes = end.map(|e| &file[offset..e]).ok_or_else(|| bad(format!("range is outside '{location}'")))?;
    t.raw_data = bytes.to_vec();
    t.data_location = None;
    t.external_data.clear();
    Ok(())
}

fn io_info(v: &pb::ValueInfoProto) -> InputInfo {
    let mut dtype = None;
    let mut dims = Vec::new();
    if let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        dtype = dtype_of_onnx(t.elem_type);
        if let Some(s) = &t.shape {
            for d in &s.dim {
                dims.push(match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                    Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => Dim::Symbolic(p.clone()),
                    _ => Dim::Symbolic(String::new()),
                });
            }
        }
    }
    InputInfo { name: v.name.clone(), dtype, dims }
}

/// Parses model bytes into tract's protobuf message.
pub fn parse_proto(model: &[u8]) -> Result<pb::ModelProto> {
    guarded("reading the model", || tract_onnx::onnx().proto_model_for_read(&mut &model[..]).map_err(tract_err))
}

impl Loaded {
    /// Parses model bytes; tensors stored externally are taken from `external`.
    pub fn new(model: &[u8], external: &External) -> Result<Loaded> {
        Loaded::from_proto(parse_proto(model)?, external)
    }

    /// [`Loaded::new`] for a model already parsed (and perhaps changed) as a protobuf message.
    pub fn from_proto(mut proto: pb::ModelProto, external: &External) -> Result<Loaded> {
        guarded("loading the model", || {
            let onnx = tract_onnx::onnx();
            let graph = proto.graph.as_mut().ok_or_else(|| RuntimeError::Tract("the model has no graph".into()))?;
            inline_graph(graph, external)?;
            let init: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
            let inputs: Vec<InputInfo> =
                graph.input.iter().filter(|i| !init.contains(i.name.as_str())).map(io_info).collect();
            let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
            // tract needs a type on every graph input; an untyped one gets a placeholder here
            // and its real type from the arrays in `prepare`.
            for i in &mut graph.input {
                if i.r#type.as_ref().and_then(|t| t.value.as_ref()).is_none() {
                    i.r#type = Some(pb::TypeProto {
                        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                            elem_type: 1,
                            shape: None,
                        })),
                        ..Default::default()
                    });
                }
            }
            crate::rewrite::for_tract(&mut proto)?;
            let model = onnx.model_for_proto_model(&proto).map_err(tract_err)?;
            let missing: Vec<String> = model
                .nodes()
                .iter()
                .filter_map(|n| unimplemented_in(&n.op.name()).map(|op| format!("{op} (node '{}')", n.name)))
                .collect();
            if !missing.is_empty() {
                return Err(RuntimeError::UnsupportedOps { ops: missing });
            }
            Ok(Loaded { model, inputs, outputs })
        })
    }

    /// The graph inputs (initializers excluded), in order.
    pub fn inputs(&self) -> &[InputInfo] {
        &self.inputs
    }

    /// The graph output names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Optimises the model for inputs of these types and shapes (in input order).
    pub fn prepare(&self, shapes: &[(Dtype, Vec<usize>)]) -> Result<Prepared> {
        self.prepare_with(shapes, true)
    }

    /// [`Loaded::prepare`], with tract's optimisation passes only when `optimize`: a
    /// model run once on few samples is ready sooner without them.
    pub fn prepare_with(&self, shapes: &[(Dtype, Vec<usize>)], optimize: bool) -> Result<Prepared> {
        if shapes.len() != self.inputs.len() {
            return Err(RuntimeError::Input(format!(
                "the model has {} inputs ({}), {} given",
                self.inputs.len(),
                self.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
                shapes.len()
            )));
        }
        for (info, (dt, shape)) in self.inputs.iter().zip(shapes) {
            if let Some(want) = info.dtype {
                if want != *dt {
                    return Err(RuntimeError::Input(format!(
                        "input '{}' is {}, the array is {}",
                        info.name,
                        want.name(),
                        dt.name()
                    )));
                }
            }
            let fits = info.dims.is_empty()
                || (info.dims.len() == shape.len()
                    && info.dims.iter().zip(shape).all(|(d, s)| !matches!(d, Dim::Fixed(n) if n != s)));
            if !fits {
                return Err(RuntimeError::Input(format!(
                    "input '{}' has shape {}, the array has {shape:?}",
                    info.name,
                    dims_text(&info.dims)
                )));
            }
        }
        guarded("optimising the model", || {
            let mut model = self.model.clone();
            for (ix, (dt, shape)) in shapes.iter().enumerate() {
                model.set_input_fact(ix, InferenceFact::dt_shape(datum_of(*dt), shape.clone())).map_err(tract_err)?;
            }
            let typed = if optimize { model.into_optimized() } else { model.into_typed() }.map_err(tract_err)?;
            let plan = typed.into_runnable().map_err(tract_err)?;
            let inputs = self.inputs.iter().zip(shapes).map(|(i, (dt, s))| (i.name.clone(), *dt, s.clone())).collect();
            Ok(Prepared { plan, inputs, outputs: self.outputs.clone() })
        })
    }
}

/// `[N, 1, 8, 8]`-style text of declared dims.
pub fn dims_text(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbolic(s) if s.is_empty() => "?".into(),
            Dim::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

macro_rules! tensor_from {
    ($a:expr, $t:ty, $w:expr) => {{
        let v: Vec<$t> =
            $a.data.chunks_exact($w).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $w]))).collect();
        Tensor::from_shape(&$a.shape, &v)
    }};
}

fn to_tensor(a: &NpyArray) -> TractResult<Tensor> {
    match a.dtype {
        Dtype::Bool => Tensor::from_shape(&a.shape, &a.data.iter().map(|&b| b != 0).collect::<Vec<bool>>()),
        Dtype::U8 => Tensor::from_shape(&a.shape, &a.data),
        Dtype::I8 => Tensor::from_shape(&a.shape, &a.data.iter().map(|&b| b as i8).collect::<Vec<i8>>()),
        Dtype::U16 => tensor_from!(a, u16, 2),
        Dtype::I16 => tensor_from!(a, i16, 2),
        Dtype::F16 => tensor_from!(a, f16, 2),
        Dtype::U32 => tensor_from!(a, u32, 4),
        Dtype::I32 => tensor_from!(a, i32, 4),
        Dtype::F32 => tensor_from!(a, f32, 4),
        Dtype::U64 => tensor_from!(a, u64, 8),
        Dtype::I64 => tensor_from!(a, i64, 8),
        Dtype::F64 => tensor_from!(a, f64, 8),
    }
}

fn le_bytes<T: Datum + Copy, const W: usize>(t: &Tensor, f: impl Fn(T) -> [u8; W]) -> TractResult<Vec<u8>> {
    Ok(t.as_slice::<T>()?.iter().flat_map(|&x| f(x)).collect())
}

fn from_tensor(t: &Tensor, name: &str) -> Result<NpyArray> {
    let shape = t.shape().to_vec();
    let (dtype, data) = match t.datum_type() {
        DatumType::Bool => (Dtype::Bool, t.as_slice::<bool>().map(|s| s.iter().map(|&b| u8::from(b)).collect())),
        DatumType::U8 => (Dtype::U8, le_bytes::<u8, 1>(t, |x| [x])),
        DatumType::I8 => (Dtype::I8, le_bytes::<i8, 1>(t, i8::to_le_bytes)),
        DatumType::U16 => (Dtype::U16, le_bytes::<u16, 2>(t, u16::to_le_bytes)),
        DatumType::I16 => (Dtype::I16, le_bytes::<i16, 2>(t, i16::to_le_bytes)),
        DatumType::F16 => (Dtype::F16, le_bytes::<f16, 2>(t, |x| x.to_le_bytes())),
        DatumType::U32 => (Dtype::U32, le_bytes::<u32, 4>(t, u32::to_le_bytes)),
        DatumType::I32 => (Dtype::I32, le_bytes::<i32, 4>(t, i32::to_le_bytes)),
        DatumType::F32 => (Dtype::F32, le_bytes::<f32, 4>(t, f32::to_le_bytes)),
        DatumType::U64 => (Dtype::U64, le_bytes::<u64, 8>(t, u64::to_le_bytes)),
        DatumType::I64 => (Dtype::I64, le_bytes::<i64, 8>(t, i64::to_le_bytes)),
        DatumType::F64 => (Dtype::F64, le_bytes::<f64, 8>(t, f64::to_le_bytes)),
        DatumType::TDim => {
            let c = t.cast_to::<i64>().map_err(tract_err)?;
            (Dtype::I64, le_bytes::<i64, 8>(&c, i64::to_le_bytes))
        }
        other => {
            return Err(RuntimeError::Tract(format!(
                "output '{name}' has type {other:?}, which cannot be saved as .npy"
            )))
        }
    };
    Ok(NpyArray::new(dtype, shape, data.map_err(tract_err)?)?)
}

impl Prepared {
    /// The (name, type, shape) of each input this plan was optimised for.
    pub fn inputs(&self) -> &[(String, Dtype, Vec<usize>)] {
        &self.inputs
    }

    /// Runs the model on arrays given in input order; returns the outputs by name, in order.
    pub fn run(&self, inputs: &[&NpyArray]) -> Result<Vec<(String, NpyArray)>> {
        if inputs.len() != self.inputs.len() {
            return Err(RuntimeError::Input(format!("{} inputs expected, {} given", self.inputs.len(), inputs.len())));
        }
        for ((name, dt, shape), a) in self.inputs.iter().zip(inputs) {
            if a.dtype != *dt || &a.shape != shape {
                return Err(RuntimeError::Input(format!(
                    "input '{name}': expected {} {shape:?}, got {} {:?}",
                    dt.name(),
                    a.dtype.name(),
                    a.shape
                )));
            }
        }
        guarded("running the model", || {
            let tensors: TVec<TValue> =
                inputs.iter().map(|a| to_tensor(a).map(|t| t.into())).collect::<TractResult<_>>().map_err(tract_err)?;
            let out = self.plan.run(tensors).map_err(tract_err)?;
            out.iter()
                .enumerate()
                .map(|(i, t)| {
                    let name = self.outputs.get(i).cloned().unwrap_or_else(|| format!("output_{i}"));
                    from_tensor(t, &name).map(|a| (name, a))
                })
                .collect()
        })
    }
}

/// Loads, optimises and runs a model once. `inputs` are matched to the model's
/// inputs by name.
pub fn run_once(
    model: &[u8],
    external: &External,
    inputs: &BTreeMap<String, NpyArray>,
) -> Result<Vec<(String, NpyArray)>> {
    let loaded = Loaded::new(model, external)?;
    let mut ordered = Vec::with_capacity(loaded.inputs().len());
    for i in loaded.inputs() {
        let a = inputs.get(&i.name).ok_or_else(|| {
            RuntimeError::Input(format!(
                "no array for input '{}' {} (give --input {}=FILE.npy)",
                i.name,
                dims_text(&i.dims),
                i.name
            ))
        })?;
        ordered.push(a);
    }
    if let Some(extra) = inputs.keys().find(|k| !loaded.inputs().iter().any(|i| &i.name == *k)) {
        return Err(RuntimeError::Input(format!(
            "the model has no input '{extra}' (inputs: {})",
            loaded.inputs().iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let shapes: Vec<(Dtype, Vec<usize>)> = ordered.iter().map(|a| (a.dtype, a.shape.clone())).collect();
    loaded.prepare(&shapes)?.run(&ordered)
}

/// Largest batch run at once when the model's batch dimension is free.
const MAX_BATCH: usize = 512;

/// The batch size to run: the model's fixed first dimension, else up to [`MAX_BATCH`].
fn batch_size(loaded: &Loaded, n: usize) -> usize {
    for info in loaded.inputs() {
        if let Some(Dim::Fixed(b)) = info.dims.first() {
            return (*b).max(1);
        }
    }
    n.clamp(1, MAX_BATCH)
}

/// Runs `loaded` on every sample of `inputs` (one array per model input, samples
/// first) in batches, and calls `each` with the number of real samples in the batch,
/// the number of rows run, and the batch's outputs. A model with a fixed batch gets full batches: the last one
/// is padded with its last sample, and only its first `real` rows are samples. `optimize`:
/// whether tract optimises the plan (worth it unless the model runs only once).
pub(crate) fn run_batches(
    loaded: &Loaded,
    inputs: &[NpyArray],
    optimize: bool,
    mut each: impl FnMut(usize, usize, Vec<(String, NpyArray)>) -> Result<()>,
) -> Result<()> {
    let n = inputs.first().and_then(|a| a.shape.first().copied()).unwrap_or(0);
    let b = batch_size(loaded, n);
    let fixed = loaded.inputs().iter().any(|i| matches!(i.dims.first(), Some(Dim::Fixed(_))));
    let mut plans: BTreeMap<usize, Prepared> = BTreeMap::new();
    let mut from = 0;
    while from < n {
        let to = (from + b).min(n);
        let run_len = if fixed { b } else { to - from };
        let mut chunk = Vec::with_capacity(inputs.len());
        for a in inputs {
            let mut c = a.rows(from, to)?;
            if run_len > to - from {
                let last = a.rows(to - 1, to)?;
                for _ in 0..run_len - (to - from) {
                    c.data.extend_from_slice(&last.data);
                }
                c.shape[0] = run_len;
            }
            chunk.push(c);
        }
        let plan = match plans.entry(run_len) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let shapes: Vec<(Dtype, Vec<usize>)> = chunk.iter().map(|a| (a.dtype, a.shape.clone())).collect();
                e.insert(loaded.prepare_with(&shapes, optimize)?)
            }
        };
        let refs: Vec<&NpyArray> = chunk.iter().collect();
        each(to - from, run_len, plan.run(&refs)?)?;
        from = to;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_operator_in_tract_messages() {
        assert_eq!(
            unimplemented_in("Translating node #3 \"x\" Unimplemented(FooBar) ToTypedTranslator"),
            Some("FooBar".into())
        );
        assert_eq!(unimplemented_in("some other error"), None);
    }
}
