use super::*;
use crate::testutil::{float_tensor, len_field as field};
use crate::wire::{put_tag, put_varint, WireType};

/// An `If` node whose `then_branch` is `graph`.
fn if_with(graph: &[u8]) -> Vec<u8> {
    let mut attr = field(1, b"then_branch");
    put_tag(&mut attr, 20, WireType::Varint);
    put_varint(&mut attr, 5);
    attr.extend_from_slice(&field(6, graph));
    [field(4, b"If"), field(5, &attr)].concat()
}

/// A GraphProto with graphs `k` levels deep below it.
fn nested(k: usize) -> Vec<u8> {
    (0..k).fold(Vec::new(), |g, _| field(1, &if_with(&g)))
}

/// docs/format.md §4: the main graph and a function's nodes are at level 0, a
/// `training_info` graph at level 1, an attribute's graph one below its node's graph;
/// a level above 64 is an invalid model.
#[test]
fn graph_depth_is_counted_as_the_spec_says() {
    let opset = field(8, &[field(1, b""), vec![0x10, 21]].concat());
    let model = |fields: Vec<u8>| [vec![0x08, 10], fields, opset.clone()].concat();
    let main = |n: usize| model(field(7, &nested(n)));
    let func = |n: usize| {
        model(
            [field(7, &[]), field(25, &[field(1, b"f"), field(10, b"d"), field(7, &if_with(&nested(n - 1)))].concat())]
                .concat(),
        )
    };
    let train = |n: usize| model([field(7, &[]), field(20, &field(1, &nested(n - 1)))].concat());
    let ok = |b: Vec<u8>| match Model::from_vec(b, None) {
        Ok(_) => true,
        Err(e) => {
            assert!(matches!(e, FormatError::TooDeep { .. }), "{e}");
            false
        }
    };
    for (what, at_64, at_65) in [
        ("main", main(MAX_GRAPH_DEPTH), main(MAX_GRAPH_DEPTH + 1)),
        ("function", func(MAX_GRAPH_DEPTH), func(MAX_GRAPH_DEPTH + 1)),
        ("training", train(MAX_GRAPH_DEPTH), train(MAX_GRAPH_DEPTH + 1)),
    ] {
        assert!(ok(at_64), "{what} at level 64");
        assert!(!ok(at_65), "{what} at level 65");
    }
}

/// The error of a model whose main graph's fields are `graph`.
fn error_of(graph: &[u8]) -> String {
    match Model::from_vec(crate::testutil::model_with_graph(graph), None) {
        Ok(_) => panic!("the model was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Errors say where they are: the graph, the field and its index, the node and its
/// attribute; an unnamed tensor is called by that place.
#[test]
fn errors_name_the_place_of_the_field() {
    let w = field(5, &float_tensor("w", &[1], &[0.0]));
    let g = [w.clone(), field(5, &float_tensor("", &[-1], &[]))].concat();
    assert_eq!(error_of(&g), "tensor 'graph main initializer #1' has a negative dimension -1");

    let constant =
        |attr: &[u8]| field(1, &[field(2, b"c"), field(3, b"k"), field(4, b"Constant"), field(5, attr)].concat());
    let value = [field(1, b"value"), field(5, &float_tensor("", &[2], &[0.0]))].concat();
    assert_eq!(
        error_of(&constant(&value)),
        "tensor 'graph main > node k (Constant) > attribute 'value'': raw_data holds 4 bytes but dims × dtype need 8"
    );
    // A truncated field inside the attribute's tensor.
    let cut = [field(1, b"value"), field(5, &[0x4a, 0x08, 0])].concat();
    assert_eq!(
        error_of(&constant(&cut)),
        "truncated protobuf: input ends inside a field at byte 40 (in graph main > node k (Constant) > attribute 'value')"
    );

    let sparse = [field(1, &float_tensor("", &[2], &[0.0])), field(2, &float_tensor("i", &[2], &[0.0; 4]))].concat();
    assert_eq!(
        error_of(&[w.clone(), field(15, &sparse)].concat()),
        "tensor 'graph main sparse_initializer #0 values': raw_data holds 4 bytes but dims × dtype need 8"
    );

    // A node whose output field is cut short.
    assert_eq!(
        error_of(&[w.clone(), field(1, &[0x12, 0x05, b'y'])].concat()),
        "truncated protobuf: input ends inside a field at byte 28 (in graph main node #0)"
    );

    // An initializer of a subgraph.
    let then =
        [field(1, b"then_branch"), vec![0xa0, 0x01, 5], field(6, &field(5, &float_tensor("", &[-2], &[])))].concat();
    let node = [field(3, b"k"), field(4, b"If"), field(5, &then)].concat();
    assert_eq!(
        error_of(&field(1, &node)),
        "tensor 'graph main/k.then_branch initializer #0' has a negative dimension -2"
    );
}

/// A name given twice in one graph is refused, the first repetition in the file's
/// order reported; unnamed values are not names.
#[test]
fn a_name_given_twice_is_refused_at_its_first_repetition() {
    let init = |n: &str| field(5, &float_tensor(n, &[1], &[0.0]));
    let out = |n: &str| field(1, &[field(2, n.as_bytes()), field(4, b"Relu")].concat());
    // x, y (initializers), then y and x again (node outputs): y is repeated first.
    let g = [init("x"), init("y"), out("y"), out("x")].concat();
    assert_eq!(error_of(&g), "node output name 'y' is defined twice in graph main");
    let g = [init("x"), init("y"), init("x"), out("y")].concat();
    assert_eq!(error_of(&g), "initializer name 'x' is defined twice in graph main");
    let g = [init("x"), out(""), out(""), out("z")].concat();
    assert!(Model::from_vec(crate::testutil::model_with_graph(&g), None).is_ok());
}
