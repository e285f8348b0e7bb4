use super::*;
use onnx_protect_format::testutil::{external_float_tensor, float_tensor, matmul_chain, model_with_graph, node};
use onnx_protect_format::wire::put_len_field;

fn big(name: &str) -> Vec<u8> {
    float_tensor(name, &[16, 16], &(0..256).map(|i| i as f32).collect::<Vec<_>>())
}

/// Every tensor big enough to be shared at all is (the tests' weights are small).
fn any_size() -> Options {
    Options { min_bytes: MIN_SHAREABLE, ..Options::default() }
}

fn reparse(graph: &[u8]) -> Model {
    Model::from_vec(graph.to_vec(), None).expect("the graph parses")
}

#[test]
fn a_matmul_weight_is_shared_and_the_graph_names_only_the_sentinel() {
    let bytes = matmul_chain(&[big("W0")]);
    let model = Model::from_vec(bytes.clone(), None).unwrap();
    let p = prepare(&model, &bytes, |_| None, &any_size()).unwrap();
    assert_eq!(p.shared.len(), 1);
    let s = &p.shared[0];
    assert_eq!((s.name.as_str(), s.dims.as_slice()), ("W0", &[16u64, 16][..]));
    let data = match s.source {
        Source::Model => &bytes[s.range.clone()],
        Source::Arena => &p.arena.bytes()[s.range.clone()],
        Source::External(_) => unreachable!(),
    };
    assert_eq!(data, &model.tensor_bytes(0).unwrap()[..]);
    // The graph keeps the tensor but no data: external data at ".", which this crate's
    // own reader refuses as onnxruntime's reads do (not a regular file).
    match Model::from_vec(p.graph_bytes(&bytes).to_vec(), Some(std::env::temp_dir())) {
        Err(FormatError::ExternalPath { tensor, location, .. }) => {
            assert_eq!((tensor.as_str(), location.as_str()), ("W0", SENTINEL))
        }
        other => panic!("expected the sentinel to be refused, got {:?}", other.map(|m| m.tensors.len())),
    }
    assert!(p.graph_bytes(&bytes).len() + 900 < bytes.len());
}

#[test]
fn without_sharing_the_graph_is_the_model() {
    let bytes = matmul_chain(&[big("W0")]);
    let model = Model::from_vec(bytes.clone(), None).unwrap();
    let p = prepare(&model, &bytes, |_| None, &Options { share: false, ..any_size() }).unwrap();
    assert!(p.shared.is_empty());
    assert_eq!(p.graph_bytes(&bytes), bytes);
    assert!(p.graph.is_none(), "handed over as it is, not copied");
    assert!(graph_is_model(&model, &Options { share: false, ..any_size() }));
}

#[test]
fn by_default_tensors_under_64_kib_stay_in_the_graph() {
    let small = matmul_chain(&[big("W0")]);
    let model = Model::from_vec(small.clone(), None).unwrap();
    assert!(prepare(&model, &small, |_| None, &Options::default()).unwrap().shared.is_empty());
    assert!(graph_is_model(&model, &Options::default()));
    let w: Vec<f32> = (0..128 * 128).map(|i| i as f32).collect();
    let large = matmul_chain(&[float_tensor("W0", &[128, 128], &w)]);
    let model = Model::from_vec(large.clone(), None).unwrap();
    assert_eq!(prepare(&model, &large, |_| None, &Options::default()).unwrap().shared.len(), 1);
    assert!(!graph_is_model(&model, &Options::default()));
}

#[test]
fn small_tensors_stay_in_the_graph() {
    let bytes = matmul_chain(&[float_tensor("W0", &[2, 2], &[1.0; 4])]);
    let model = Model::from_vec(bytes.clone(), None).unwrap();
    assert!(prepare(&model, &bytes, |_| None, &any_size()).unwrap().shared.is_empty());
}

/// `y = x · Transpose(W)`: the Transpose is folded from the graph's data, so W stays in it.
#[test]
fn a_weight_an_optimiser_folds_is_not_shared() {
    let mut g = Vec::new();
    put_len_field(&mut g, 1, &node("Transpose", &["W"], &["Wt"], "t"));
    put_len_field(&mut g, 1, &node("MatMul", &["x", "Wt"], &["y"], "mm"));
    put_len_field(&mut g, 5, &big("W"));
    let bytes = model_with_graph(&g);
    let model = Model::from_vec(bytes.clone(), None).unwrap();
    let p = prepare(&model, &bytes, |_| None, &any_size()).unwrap();
    assert!(p.shared.is_empty(), "{:?}", p.shared);
    assert_eq!(p.graph_bytes(&bytes), bytes);
}

#[test]
fn a_weight_with_another_use_is_not_shared() {
    let mut g = Vec::new();
    put_len_field(&mut g, 1, &node("MatMul", &["x", "W"], &["y"], "mm"));
    put_len_field(&mut g, 1, &node("Add", &["y", "W"], &["z"], "add"));
    put_len_field(&mut g, 5, &big("W"));
    let bytes = model_with_graph(&g);
    let model = Model::from_vec(bytes.clone(), None).unwrap();
    assert!(prepare(&model, &bytes, |_| None, &any_size()).unwrap().shared.is_empty());
}

#[test]
fn unshared_external_data_is_written_into_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<u8> = (0..64u8).collect();
    std::fs::write(dir.path().join("w.bin"), &values).unwrap();
    // 16 floats: under min_bytes, so written into the graph.
    let bytes = matmul_chain(&[external_float_tensor("W0", &[4, 4], "w.bin", 0, 64)]);
    std::fs::write(dir.path().join("m.onnx"), &bytes).unwrap();
    let model = Model::open(dir.path().join("m.onnx")).unwrap();
    let p = prepare(&model, &bytes, |l| (l == "w.bin").then_some(&values[..]), &any_size()).unwrap();
    assert!(p.shared.is_empty());
    let g = reparse(p.graph_bytes(&bytes));
    assert!(g.external_files.is_empty());
    assert_eq!(&g.tensor_bytes(0).unwrap()[..], &values[..]);
    // A missing external buffer is an error, not a graph that names the file.
    assert!(prepare(&model, &bytes, |_| None, &any_size()).is_err());
}

#[test]
fn shared_external_tensors_point_into_their_file_and_oversized_graphs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let values = vec![7u8; 4096];
    std::fs::write(dir.path().join("w.bin"), &values).unwrap();
    let bytes = matmul_chain(&[external_float_tensor("W0", &[32, 32], "w.bin", 0, 4096)]);
    std::fs::write(dir.path().join("m.onnx"), &bytes).unwrap();
    let model = Model::open(dir.path().join("m.onnx")).unwrap();
    let p = prepare(&model, &bytes, |_| Some(&values[..]), &any_size()).unwrap();
    assert_eq!(p.shared.len(), 1);
    assert!(matches!(&p.shared[0].source, Source::External(l) if l == "w.bin") || p.shared[0].source == Source::Arena);
    let small = Options { share: false, max_graph: 1000, ..any_size() };
    assert!(prepare(&model, &bytes, |_| Some(&values[..]), &small).is_err());
}
