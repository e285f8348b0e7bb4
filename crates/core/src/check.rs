//! The CI gate behind `onnx-protect check`: is a model protected, and at least
//! as strongly as a policy asks?
//!
//! Selection is key-independent and a protected model keeps the structure of
//! the original (names, types, shapes, storage), so running
//! [`onnx_protect_select::select`] on the *protected* model gives exactly what
//! the policy would have encrypted in the original. Every tensor of that
//! selection must then appear in the manifest:
//!
//! * with at least as many encrypted bytes as the chosen number of subsequences
//!   holds (the same rounding as selection: `k = ⌈c·n⌉` of `n`; when the
//!   subsequences differ in size, the `k` smallest), or, with
//!   [`CheckOptions::strict_spans`], with spans that contain every selected span;
//! * in a mode at least as strong: `ctr` (every bit) meets any requirement; any
//!   other mode meets only itself, so `fp` fails a `ctr` requirement.
//!
//! Integrity is checked without a key: the manifest must be well formed and
//! match the model, and the keyless checksum must match the ciphertext.
//!
//! Whatever the policy, a model fails when it is not protected (unless
//! [`CheckOptions::allow_unprotected`]) or when nothing in it is still encrypted. With
//! [`CheckOptions::require_encrypted`], only bytes whose every bit is under the keystream
//! ([`ProtectionKind::Encrypted`]: `ctr`, and `fp` on integer types) count as encrypted,
//! unless the policy given accepts `fp` (then float `fp` bytes count) or `dp`.
//!
//! The check never fails as a function: every problem becomes a [`Failure`] in
//! the returned [`ModelCheck`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use onnx_protect_format::{discover, Model, Progress};
use onnx_protect_select::{select, subsequence_bounds, Chosen, Mode, Policy, Selection, Split};

use crate::error::{CoreError, ErrorKind};
use crate::protection::{open_protected, Protection, ProtectionView};
use crate::summary::ProtectionKind;
use crate::target::Target;

/// Stable reason names of a [`Failure`] (used in JSON output and documented in `docs/ci.md`).
pub mod reasons {
    /// The model file cannot be read or parsed.
    pub const BAD_MODEL: &str = "bad_model";
    /// The model carries an onnx-protect entry of a format version this tool does not know.
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// The model has no protection manifest.
    pub const NOT_PROTECTED: &str = "not_protected";
    /// The model is in format 1, whose MAC covers only the encrypted spans (unless
    /// [`CheckOptions::allow_format_1`](super::CheckOptions::allow_format_1)).
    pub const FORMAT_1: &str = "format_1";
    /// The model has a manifest, but no byte that counts as encrypted: none at all under
    /// a key, or (with `--require-encrypted`) only bytes of modes the policy does not accept.
    pub const NOTHING_ENCRYPTED: &str = "nothing_encrypted";
    /// The manifest is invalid or does not match the model, or the checksum of the ciphertext does not match.
    pub const MODIFIED: &str = "modified";
    /// The key given opens no recipient stanza of the model, or does not reach what is asked.
    pub const WRONG_KEY: &str = "wrong_key";
    /// The model needs a licence (`encrypt --licence-authority`) and none was given; the
    /// other licence refusals have their kind's name as reason (`licence_expired`, ...,
    /// [`LicenceKind::as_str`](crate::error::LicenceKind::as_str)).
    pub const LICENCE_MISSING: &str = "licence_missing";
    /// The policy covers an operator type whose weights the model has, but none of them is encrypted.
    pub const OP_NOT_COVERED: &str = "op_not_covered";
    /// A tensor the policy selects is not encrypted (its operator type is otherwise covered).
    pub const TENSOR_NOT_ENCRYPTED: &str = "tensor_not_encrypted";
    /// A tensor is encrypted, but less of it than the policy's coefficient selects.
    pub const COEFFICIENT_BELOW_POLICY: &str = "coefficient_below_policy";
    /// A tensor is encrypted in a weaker mode than the policy asks (`fp` where `ctr` is asked).
    pub const MODE_WEAKER: &str = "mode_weaker";
}

/// What the gate requires.
pub struct CheckOptions<'a> {
    /// Compare the protection with this policy; `None` checks only protection and integrity.
    pub policy: Option<&'a Policy>,
    /// Require encrypted bytes in the strict sense: every bit under the keystream
    /// ([`ProtectionKind::Encrypted`]), or a mode the policy accepts (`fp`, `dp`).
    pub require_encrypted: bool,
    /// Let a model without a manifest (or with nothing encrypted) pass; by default it
    /// fails. A policy that selects weights still fails it.
    pub allow_unprotected: bool,
    /// Require the encrypted spans to contain the policy's spans, not only as many bytes.
    pub strict_spans: bool,
    /// Let a format-1 model pass (its MAC covers only the encrypted spans: a changed clear
    /// byte goes unnoticed); by default it fails with [`reasons::FORMAT_1`].
    pub allow_format_1: bool,
    /// Check the MACs with this key (and its secret positions), not only the keyless digest.
    pub key: Option<&'a crate::keys::KeySource>,
    /// Require a valid signature of one of these publishers.
    pub signers: &'a [onnx_protect_keys::SignerKey],
    pub progress: &'a dyn Progress,
}

/// One reason a model fails the gate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// One of [`reasons`].
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
    pub detail: String,
}

/// Per operator type of the policy: what it asks and what the model has.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpCoverage {
    pub op_type: String,
    pub coefficient: f64,
    pub mode: &'static str,
    /// What that mode does to this operator type's weights, in words ([`ProtectionKind::label`]).
    pub label: &'static str,
    /// Tensors the policy selects for this operator type.
    pub tensors: usize,
    /// Of those, tensors present in the manifest.
    pub tensors_encrypted: usize,
    /// Element bytes of the selected tensors.
    pub weight_bytes: u64,
    /// Bytes the policy would encrypt.
    pub required_bytes: u64,
    /// Bytes the manifest encrypts in those tensors.
    pub encrypted_bytes: u64,
    /// `encrypted_bytes / weight_bytes` (0 when there are no weight bytes).
    pub encrypted_fraction: f64,
    pub passed: bool,
}

/// The verdict for one model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelCheck {
    pub path: String,
    pub passed: bool,
    pub protected: bool,
    /// What was verified: `"checksum"` (the keyless digest of every byte), `"mac"` (also
    /// the MACs the key reaches), each followed by `+signature` when trusted signers were checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<&'static str>,
    pub tensors: usize,
    /// Bytes the manifest lists under any mode (see `bytes_by_protection`).
    pub encrypted_bytes: u64,
    /// The bytes still under a key in the file (tiers decrypted in it excluded), per kind
    /// of protection: `encrypted`, `exponent_clear`, `permuted`.
    pub bytes_by_protection: BTreeMap<&'static str, u64>,
    pub failures: Vec<Failure>,
    /// Empty without a policy.
    pub ops: Vec<OpCoverage>,
    /// [`FORMAT_1_WARNING`](crate::format1::FORMAT_1_WARNING) for a format-1 model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'static str>,
}

fn failure(reason: &'static str, detail: impl Into<String>) -> Failure {
    Failure { reason, op_type: None, tensor: None, detail: detail.into() }
}

/// Whether a tensor encrypted in mode `actual` meets a policy asking for `required`:
/// `ctr` encrypts every bit and meets any requirement; any other mode only itself.
fn mode_satisfies(actual: Mode, required: Mode) -> bool {
    actual == required || actual == Mode::Ctr
}

/// The fewest bytes any choice of `k` of the tensor's subsequences under `rule` can have:
/// the sum of the `k` smallest. This does not depend on *which* subsequences a policy
/// picks, so it holds even when the choice depends on the (now encrypted) values.
fn min_bytes(t: &onnx_protect_format::Tensor, split: Split, k: usize) -> Option<u64> {
    let bounds = subsequence_bounds(t.data_type, &t.dims, t.numel, split)?;
    let mut sizes: Vec<u64> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
    sizes.sort_unstable();
    Some(sizes.iter().take(k).sum())
}

fn error_reason(e: &CoreError) -> &'static str {
    match e.kind() {
        ErrorKind::BadManifest | ErrorKind::Modified | ErrorKind::NotSigned => reasons::MODIFIED,
        ErrorKind::UnsupportedVersion => reasons::UNSUPPORTED_VERSION,
        ErrorKind::NotProtected => reasons::NOT_PROTECTED,
        ErrorKind::WrongKey | ErrorKind::Key => reasons::WRONG_KEY,
        // `licence_missing`, `licence_expired`, ...: each refusal has its own reason.
        ErrorKind::Licence(l) => l.as_str(),
        ErrorKind::Io
        | ErrorKind::Model(_)
        | ErrorKind::Policy
        | ErrorKind::AlreadyProtected
        | ErrorKind::AlreadyDecrypted
        | ErrorKind::Output
        | ErrorKind::Internal => reasons::BAD_MODEL,
    }
}

/// Whether every span of `need` lies inside one span of `have` (both sorted and disjoint).
/// The encrypted spans of one tensor (all its targets, merged) and their modes.
struct Encrypted {
    spans: Vec<(u64, u64)>,
    modes: Vec<Mode>,
}

/// `spans` sorted, with overlapping and touching ranges merged.
fn union(mut spans: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn spans_contain(have: &[(u64, u64)], need: &[(u64, u64)]) -> bool {
    need.iter().all(|&(a, b)| have.iter().any(|&(x, y)| x <= a && b <= y))
}

/// Checks one model file (see the module documentation).
pub fn check_model(path: &Path, opts: &CheckOptions) -> ModelCheck {
    let mut out = ModelCheck {
        path: path.display().to_string(),
        passed: false,
        protected: false,
        integrity: None,
        tensors: 0,
        encrypted_bytes: 0,
        bytes_by_protection: BTreeMap::new(),
        failures: Vec::new(),
        ops: Vec::new(),
        warning: None,
    };
    // A protected model that no longer parses is "modified", as `verify` reports it.
    let model = match open_protected(path, opts.progress) {
        Ok(m) => m,
        Err(e) => {
            out.protected = e.kind() == ErrorKind::Modified;
            out.failures.push(failure(error_reason(&e), e.to_string()));
            return out;
        }
    };
    check_opened(&model, opts, &mut out);
    out.passed = out.failures.is_empty();
    out
}

fn check_opened(model: &Model, opts: &CheckOptions, out: &mut ModelCheck) {
    // The entry is read once: a model whose entry cannot be read carries one all the same.
    let protection = match Protection::read(model) {
        Ok(p) => p,
        Err(e) => {
            out.protected = true;
            out.failures.push(failure(error_reason(&e), e.to_string()));
            return;
        }
    };
    // The check of `onnx-protect verify`: without a key the manifest's form and the
    // keyless digest, with one the MACs; the signers asked for.
    let verified = protection.as_ref().map(|p| p.verify(model, opts.key, opts.signers));
    let view = protection.map(Protection::view);
    match (&view, verified) {
        (Some(v), Some(verified)) => {
            out.protected = true;
            out.warning = crate::format1::warning_for(v.format_version);
            if v.format_version == 1 && !opts.allow_format_1 {
                out.failures.push(failure(
                    reasons::FORMAT_1,
                    format!(
                        "{} (a changed clear byte goes unnoticed; pass --allow-format-1 to let such models pass)",
                        crate::format1::FORMAT_1_WARNING
                    ),
                ));
            }
            out.tensors = v.targets.len();
            out.encrypted_bytes = v.targets.iter().map(Target::bytes).sum();
            out.bytes_by_protection = still_encrypted_by_protection(model, v);
            match verified {
                Ok(_) => {
                    out.integrity = Some(match (opts.key.is_some(), opts.signers.is_empty()) {
                        (true, true) => "mac",
                        (true, false) => "mac+signature",
                        (false, true) => "checksum",
                        (false, false) => "checksum+signature",
                    })
                }
                Err(e) => out.failures.push(failure(error_reason(&e), e.to_string())),
            }
            check_encrypted_bytes(opts, out);
        }
        _ if !opts.allow_unprotected => {
            out.failures.push(failure(
                reasons::NOT_PROTECTED,
                "the model has no onnx-protect manifest (pass --allow-unprotected to let such models pass)",
            ));
        }
        _ => {}
    }
    if let Some(policy) = opts.policy {
        compare_with_policy(model, view.as_ref().map(|v| v.targets.as_slice()), policy, opts, out);
    }
}

/// Bytes still under a key in the file (tiers not decrypted in it), per kind of protection.
fn still_encrypted_by_protection(model: &Model, v: &ProtectionView) -> BTreeMap<&'static str, u64> {
    let mut by: BTreeMap<&'static str, u64> = ProtectionKind::ALL.iter().map(|p| (p.id(), 0)).collect();
    for t in v.still_encrypted() {
        let kind = ProtectionKind::of(t.mode, model.tensors[t.tensor].data_type);
        *by.entry(kind.id()).or_default() += t.bytes();
    }
    by
}

/// The modes a policy asks for (rules of any kind with a coefficient above 0).
fn accepted_modes(policy: &Policy) -> Vec<Mode> {
    policy.all_rules().into_iter().filter(|(_, r)| r.coefficient > 0.0).map(|(_, r)| policy.mode_of(r)).collect()
}

/// Fails a protected model with nothing encrypted: no byte under a key at all (unless
/// unprotected models are allowed), or, with `require_encrypted`, no byte that counts:
/// fully encrypted bytes, and `fp`/`dp` bytes only if the policy asks for those modes.
fn check_encrypted_bytes(opts: &CheckOptions, out: &mut ModelCheck) {
    let get = |p: ProtectionKind| out.bytes_by_protection.get(p.id()).copied().unwrap_or(0);
    let (full, fp, dp) =
        (get(ProtectionKind::Encrypted), get(ProtectionKind::ExponentClear), get(ProtectionKind::Permuted));
    if full + fp + dp == 0 {
        if !opts.allow_unprotected || opts.require_encrypted {
            out.failures.push(failure(
                reasons::NOTHING_ENCRYPTED,
                "the model has a manifest, but no byte of it is encrypted in this file",
            ));
        }
        return;
    }
    if !opts.require_encrypted {
        return;
    }
    let accepted = opts.policy.map(accepted_modes).unwrap_or_default();
    let counted =
        full + if accepted.contains(&Mode::Fp) { fp } else { 0 } + if accepted.contains(&Mode::Dp) { dp } else { 0 };
    if counted == 0 {
        out.failures.push(failure(
            reasons::NOTHING_ENCRYPTED,
            format!(
                "no byte is encrypted (every bit under the keystream): {fp} bytes are {} and {dp} {}, which count \
                 only when the policy given asks for fp or dp",
                ProtectionKind::ExponentClear.label(),
                ProtectionKind::Permuted.label()
            ),
        ));
    }
}

fn compare_with_policy(
    model: &Model,
    protected: Option<&[Target]>,
    policy: &Policy,
    opts: &CheckOptions,
    out: &mut ModelCheck,
) {
    let weights = discover(model);
    let required = select(model, &weights, policy);
    let have = encrypted_by_tensor(protected);
    let need = required_by_tensor(&required);
    if protected.is_none() && opts.allow_unprotected && !required.chosen.is_empty() {
        out.failures.push(failure(
            reasons::NOT_PROTECTED,
            format!(
                "the model has no onnx-protect manifest; the policy selects {} bytes in {} tensors",
                required.bytes(),
                required.chosen.len()
            ),
        ));
    }
    let mut ops: BTreeMap<String, OpCoverage> = BTreeMap::new();
    let mut tensor_failures: BTreeMap<String, Vec<Failure>> = BTreeMap::new();
    for c in &need {
        // The rule that chose the tensor (an operator, role, layer or name rule).
        let rules = policy.all_rules();
        let rule = rules.iter().find(|(sel, _)| sel.text() == c.rule).map(|(_, r)| *r).or(policy.rule_for(&c.op_type));
        let cov = ops.entry(c.op_type.clone()).or_insert_with(|| OpCoverage {
            op_type: c.op_type.clone(),
            coefficient: rule.map(|r| r.coefficient).unwrap_or(0.0),
            mode: c.mode.name(),
            label: ProtectionKind::of(c.mode, model.tensors[c.tensor].data_type).label(),
            tensors: 0,
            tensors_encrypted: 0,
            weight_bytes: 0,
            required_bytes: 0,
            encrypted_bytes: 0,
            encrypted_fraction: 0.0,
            passed: true,
        });
        let list = tensor_failures.entry(c.op_type.clone()).or_default();
        let split = rule.map(|_| c.split);
        compare_tensor(model, c, split, have.get(&c.tensor), opts.strict_spans, cov, list);
    }
    for (op, cov) in ops.iter_mut() {
        cov.encrypted_fraction =
            if cov.weight_bytes > 0 { cov.encrypted_bytes as f64 / cov.weight_bytes as f64 } else { 0.0 };
        let list = tensor_failures.remove(op).unwrap_or_default();
        cov.passed = list.is_empty();
        if protected.is_none() {
            continue;
        }
        if cov.tensors_encrypted == 0 {
            out.failures.push(Failure {
                reason: reasons::OP_NOT_COVERED,
                op_type: Some(op.clone()),
                tensor: None,
                detail: format!(
                    "the policy covers {op} (coefficient {}, mode {}), but none of its {} selected tensors is encrypted",
                    cov.coefficient, cov.mode, cov.tensors
                ),
            });
        } else {
            out.failures.extend(list);
        }
    }
    out.ops = ops.into_values().collect();
}

/// What is encrypted, per tensor, with spans merged: a tiered model has one target per
/// tier of a tensor.
fn encrypted_by_tensor(protected: Option<&[Target]>) -> HashMap<usize, Encrypted> {
    let mut have: HashMap<usize, Encrypted> = HashMap::new();
    for t in protected.unwrap_or_default() {
        let e = have.entry(t.tensor).or_insert_with(|| Encrypted { spans: Vec::new(), modes: Vec::new() });
        e.spans.extend(&t.spans);
        e.modes.push(t.mode);
    }
    for e in have.values_mut() {
        e.spans = union(std::mem::take(&mut e.spans));
    }
    have
}

/// What the policy asks for, per tensor, with spans merged (a policy with tiers also
/// lists a tensor once per tier; `select` sorts them by tensor).
fn required_by_tensor(required: &Selection) -> Vec<Chosen> {
    let mut need: Vec<Chosen> = Vec::new();
    for c in &required.chosen {
        match need.last_mut() {
            Some(n) if n.tensor == c.tensor => {
                n.spans.extend(&c.spans);
                n.chosen.extend(&c.chosen);
            }
            _ => need.push(c.clone()),
        }
    }
    for n in &mut need {
        n.spans = union(std::mem::take(&mut n.spans));
        // Tiers by class along a layer's last axis cut each row over several tiers.
        n.chosen.sort_unstable();
        n.chosen.dedup();
    }
    need
}

/// Compares one tensor the policy selects (`c`, whose rule splits it by `split`) with
/// what is encrypted of it (`have`), adding it to its operator type's coverage `cov`
/// and its failures to `list`.
fn compare_tensor(
    model: &Model,
    c: &Chosen,
    split: Option<Split>,
    have: Option<&Encrypted>,
    strict_spans: bool,
    cov: &mut OpCoverage,
    list: &mut Vec<Failure>,
) {
    let t = &model.tensors[c.tensor];
    cov.tensors += 1;
    cov.weight_bytes += t.nbytes;
    // What the policy asks for in this tensor: with strict spans, exactly its spans;
    // otherwise as many bytes as its chosen number of subsequences must hold.
    let required = if strict_spans {
        c.bytes()
    } else {
        split.and_then(|s| min_bytes(t, s, c.chosen.len())).unwrap_or(c.bytes()).min(c.bytes())
    };
    cov.required_bytes += required;
    let fail = |reason: &'static str, detail: String| Failure {
        reason,
        op_type: Some(c.op_type.clone()),
        tensor: Some(t.name.clone()),
        detail,
    };
    let Some(target) = have else {
        list.push(fail(
            reasons::TENSOR_NOT_ENCRYPTED,
            format!("the policy selects {} of its {} bytes; none is encrypted", required, t.nbytes),
        ));
        return;
    };
    cov.tensors_encrypted += 1;
    let enc: u64 = target.spans.iter().map(|(a, b)| b - a).sum();
    cov.encrypted_bytes += enc;
    if enc < required {
        list.push(fail(
            reasons::COEFFICIENT_BELOW_POLICY,
            format!("{enc} of {} bytes are encrypted; the policy selects {required}", t.nbytes),
        ));
    } else if strict_spans && !spans_contain(&target.spans, &c.spans) {
        list.push(fail(
            reasons::COEFFICIENT_BELOW_POLICY,
            format!("the encrypted spans {:?} do not contain the policy's spans {:?}", target.spans, c.spans),
        ));
    }
    if let Some(weaker) = target.modes.iter().find(|&&m| !mode_satisfies(m, c.mode)) {
        list.push(fail(
            reasons::MODE_WEAKER,
            format!("encrypted in mode {}; the policy asks for {}", weaker.name(), c.mode.name()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_containment() {
        assert!(spans_contain(&[(0, 10), (20, 30)], &[(0, 4), (22, 30)]));
        assert!(!spans_contain(&[(0, 10), (20, 30)], &[(8, 12)]));
        assert!(spans_contain(&[(0, 10)], &[]));
    }

    #[test]
    fn union_merges_touching_and_overlapping_spans() {
        assert_eq!(union(vec![(20, 30), (0, 10), (10, 12), (25, 40), (50, 60)]), vec![(0, 12), (20, 40), (50, 60)]);
        assert_eq!(union(Vec::new()), Vec::new());
    }

    #[test]
    fn ctr_is_stronger_than_fp() {
        assert!(mode_satisfies(Mode::Ctr, Mode::Fp));
        assert!(mode_satisfies(Mode::Fp, Mode::Fp));
        assert!(!mode_satisfies(Mode::Fp, Mode::Ctr));
    }
}
