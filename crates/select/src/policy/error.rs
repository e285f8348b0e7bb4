/// A policy file or override that cannot be used, or a policy that cannot encrypt a
/// given model as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("policy: {0}")]
    Toml(String),
    #[error("policy: {0}")]
    Invalid(String),
    /// The model has no weight to select.
    #[error(
        "policy: the model has no weights to encrypt: no operator reads a floating-point constant tensor or a \
         weight input (parameters kept in node attribute lists, as the ai.onnx.ml tree, linear and SVM operators \
         keep them, are not encrypted)"
    )]
    NoWeights,
    /// The policy selects `count` weights and none can be encrypted as it says (the first,
    /// `tensor`, for `reason`).
    #[error(
        "policy: the policy encrypts 0 bytes of this model: the {count} weight(s) it selects cannot be encrypted \
         so ('{tensor}': {reason}); choose another mode, or allow it explicitly"
    )]
    NothingEncryptable { count: usize, tensor: String, reason: String },
    /// The policy selects no byte of the model.
    #[error("policy: the policy encrypts 0 bytes of this model; raise a coefficient, or allow it explicitly")]
    NothingSelected,
    /// Access tiers with the `ctr` mode, here for `tensor` (the `op_type` operator's
    /// `role` input).
    #[error(
        "policy: access tiers need the fp or dp mode, but '{tensor}' ({op_type} {role}) would be encrypted with \
         ctr, which gives NaN outputs at every partial tier; use --mode '*=fp' or --mode '*=dp'"
    )]
    CtrWithTiers { tensor: String, op_type: String, role: String },
    /// `tensor` (`elements` elements) would be cut into `dp` spans of fewer than `min`.
    #[error(
        "policy: the dp mode needs subsequences of at least {min} elements, but '{tensor}' ({op_type} {role}, \
         {elements} elements) would be cut shorter (a shorter permutation hides too little); use fewer \
         subsequences, or another mode for it (for example --mode {op_type}=fp)"
    )]
    ShortPermutation { min: u64, tensor: String, op_type: String, role: String, elements: u64 },
    /// `tier_order = "classes"` for a model whose class layer cannot give every tier a class.
    #[error(
        "policy: tiers by class (tier_order \"classes\", tier classes) need a classifier whose last layer (the kernel of a Gemm, Conv or \
         MatMul, one row or column per class of a [batch, classes] output, every byte encrypted) has a class for \
         each tier (columns cut into at most 2^20 spans), and this model has none; use tier_order \"importance\""
    )]
    NoClassLayer,
    /// Tier classes name `class`, and the class layer has `classes` rows.
    #[error("policy: tier classes name class {class}, and the model's class layer has {classes} classes (0 to {last})", last = classes - 1)]
    TierClassOutOfRange { class: u64, classes: u64 },
    /// Secret positions asked for with access tiers.
    #[error("policy: secret positions are not available with access tiers")]
    SecretPositionsWithTiers,
    /// Secret positions asked for with `tensor` in the `ctr` mode.
    #[error(
        "policy: secret positions need a mode whose ciphertext looks like weights (fp or dp); '{tensor}' would be \
         ctr, whose values give the encrypted rows away"
    )]
    SecretPositionsWithCtr { tensor: String },
    /// A label lock asked for on a model that shares its data key with others.
    #[error(
        "policy: the outputs of a model that shares its data key with other models (a model folder) cannot be locked"
    )]
    LockSharedKey,
}
