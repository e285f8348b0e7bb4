//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every valid fixture model: `fixtures/models/<case>/model.onnx`.
pub fn fixture_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/models"))
        .expect("fixtures/models exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("model.onnx"))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    assert!(v.len() >= 10, "expected the fixture models, found {}", v.len());
    v
}

/// The built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_onnx-protect"))
}

/// Runs the binary, returning (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin()).args(args).output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies a fixture folder into a fresh temp dir, returning (guard, copied model path).
pub fn copy_fixture(model: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = model.parent().expect("model has a folder");
    for e in std::fs::read_dir(src).expect("read fixture dir") {
        let e = e.expect("entry");
        let meta = std::fs::symlink_metadata(e.path()).expect("meta");
        if meta.is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
        }
    }
    let p = dir.path().join(model.file_name().expect("name"));
    (dir, p)
}

/// The format-2 manifest of an open protected model, decoded and matched to the model
/// (panics on a model without a sound one).
pub fn manifest_v2(model: &onnx_protect_format::Model) -> onnx_protect_core::format2::ProtectedV2 {
    use onnx_protect_core::format2::envelope::{parse_entry, trailing_entry};
    use onnx_protect_core::format2::ProtectedV2;
    let (range, value) = trailing_entry(model.bytes()).expect("a format-2 entry ends the file");
    let sealed = parse_entry(value, range).expect("a sound entry");
    ProtectedV2::match_model(model, sealed).expect("the entry matches the model")
}

/// The format-2 manifest of the protected model file at `path`.
pub fn manifest_of(path: &Path) -> onnx_protect_core::format2::ProtectedV2 {
    manifest_v2(&onnx_protect_format::Model::open(path).expect("the model opens"))
}

/// Fewest elements format 2 allows in a distribution-preserving span (docs/format.md §6).
pub const DP_MIN_ELEMENTS: u64 = 16;

/// `policy` made acceptable to format 2's distribution-preserving mode on `model`. Selection
/// already permutes short rows in chunks of 16 elements and skips smaller tensors; for an
/// explicit split that still gives shorter dp spans, the operator is split into one
/// subsequence per tensor, and roles still too small are left out of the policy. A model
/// with no tensor large enough gets `policy` in the fp mode instead. Returns the policy and
/// how many tensors it encrypts with dp.
pub fn dp_where_possible(model: &Path, policy: onnx_protect_select::Policy) -> (onnx_protect_select::Policy, usize) {
    use onnx_protect_select::{select, Mode, Split};
    let m = onnx_protect_format::Model::open(model).expect("the model opens");
    let weights = onnx_protect_format::discover(&m);
    let original = policy.clone();
    let mut policy = policy;
    for round in 0..8 {
        let selection = select(&m, &weights, &policy);
        let short: Vec<(String, String)> = selection
            .chosen
            .iter()
            .filter(|c| c.mode == Mode::Dp)
            .filter(|c| {
                let elem = (m.tensors[c.tensor].data_type.bits() / 8).max(1);
                c.spans.iter().any(|(a, b)| (b - a) / elem < DP_MIN_ELEMENTS)
            })
            .map(|c| (c.op_type.clone(), c.role.clone()))
            .collect();
        if short.is_empty() {
            let dp = selection.chosen.iter().filter(|c| c.mode == Mode::Dp).count();
            if dp == 0 {
                let mut fp = original;
                fp.apply_override("mode", "*=fp").expect("a valid override");
                return (fp, 0);
            }
            return (policy, dp);
        }
        for (op, role) in short {
            let chosen_roles: Vec<String> =
                selection.chosen.iter().filter(|c| c.op_type == op).map(|c| c.role.clone()).collect();
            let rule = policy.rules.get_mut(&op).expect("a rule of the policy chose it");
            if round == 0 {
                rule.split = Split::Count(1);
            } else {
                let mut roles = rule.roles.clone().unwrap_or(chosen_roles);
                roles.retain(|r| *r != role);
                roles.sort_unstable();
                roles.dedup();
                rule.roles = Some(roles);
            }
        }
    }
    panic!("{}: no dp policy found", model.display());
}

/// Writes `dir/dp.toml`, a policy for the binary that uses the distribution-preserving
/// mode on cnn_torch, fp16 and the digit mlp where format 2 allows it (spans of at least
/// 16 elements): on the Conv and Gemm weights, whose rows are long enough, and on MatMul
/// weights as one span each (fp16's rows hold 4 elements); the biases are left out and
/// BatchNormalization (8 elements per tensor) takes fp.
pub fn dp_policy_file(dir: &Path) -> PathBuf {
    let p = dir.join("dp.toml");
    let text = "version = 1\ninherit_builtin = false\n\
                [ops.Conv]\ncoefficient = 0.5\nmode = \"dp\"\nroles = [\"W\"]\n\
                [ops.Gemm]\ncoefficient = 0.5\nmode = \"dp\"\nroles = [\"B\"]\n\
                [ops.MatMul]\ncoefficient = 0.5\nmode = \"dp\"\nroles = [\"B\"]\nsubsequences = 1\n\
                [ops.BatchNormalization]\ncoefficient = 0.5\nmode = \"fp\"\n";
    std::fs::write(&p, text).expect("write the policy");
    p
}

/// A path as `&str` (test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs `<verb> <input> -o <output> --key-file <key> <extra...>` and asserts that it exits 0.
pub fn run_keyed(verb: &str, input: &Path, output: &Path, key: &Path, extra: &[&str]) {
    let (code, _, err) =
        run(&[&[verb, path_str(input), "-o", path_str(output), "--key-file", path_str(key)], extra].concat());
    assert_eq!(code, 0, "{verb} {}: {err}", input.display());
}

/// The digits MLP fixture.
pub fn mlp() -> PathBuf {
    root().join("fixtures/digits/mlp.onnx")
}

/// A new key file `DIR/key`, written by `keygen`.
pub fn keygen_in(dir: &Path) -> PathBuf {
    let k = dir.join("key");
    let (code, _, err) = run(&["keygen", "-o", path_str(&k), "-q"]);
    assert_eq!(code, 0, "{err}");
    k
}

/// Half of every weight's rows, evenly spread, for every known operator type, and nothing
/// else (as a file: [`half_policy_file`]). Tests of the file format and its round trips use
/// it so that every fixture has both encrypted and clear bytes in every kind of tensor (the
/// built-in policy encrypts every weight whole).
pub fn half_policy() -> onnx_protect_select::Policy {
    let mut p = onnx_protect_select::Policy::empty();
    for op in onnx_protect_select::KNOWN_OPS {
        p.apply_override("coefficient", &format!("{op}=0.5")).expect("a valid override");
    }
    p
}

/// [`half_policy`] as a policy file.
pub fn half_policy_file(dir: &Path) -> PathBuf {
    let path = dir.join("half.toml");
    std::fs::write(&path, half_policy().to_toml()).expect("the policy file is written");
    path
}

/// `assess`'s variant rows in report order: the tests' own expectation, written apart from
/// the crate's list.
pub fn assess_variants() -> Vec<&'static str> {
    "original no_key zero_fill mean_fill init_fill zero_fill_bn mean_fill_bn init_fill_bn decrypted"
        .split(' ')
        .collect()
}
