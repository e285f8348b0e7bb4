use crate::model::{Model, TensorId};

/// What a weight is for in its operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightKind {
    /// The main weight matrix/kernel/table (Conv W, Gemm B, MatMul operands, RNN W/R, embeddings).
    Main,
    /// Additive biases (Conv B, Gemm C, RNN B).
    Bias,
    /// Normalisation parameters (scale, bias, running statistics).
    Norm,
    /// Quantisation scales and zero points.
    Quant,
    /// A floating-point constant in an input the role table does not name.
    Other,
}

impl WeightKind {
    pub fn name(self) -> &'static str {
        match self {
            WeightKind::Main => "main",
            WeightKind::Bias => "bias",
            WeightKind::Norm => "norm",
            WeightKind::Quant => "quant",
            WeightKind::Other => "other",
        }
    }
}

/// What a weight is for in the model, whatever operator consumes it. Policies can
/// address weights by it (`[roles.NAME]`, `--coefficient role:NAME=C`).
///
/// | role | the constant is |
/// | --- | --- |
/// | `weight` | the main operand of `Conv`, `ConvTranspose`, `Gemm`, `MatMul` and their quantized forms |
/// | `embedding` | the table of a `Gather` |
/// | `recurrent` | the `W` or `R` of an `LSTM`, `GRU`, `RNN` or `DynamicQuantizeLSTM` |
/// | `bias` | a bias input (`Conv`/`ConvTranspose` `B`, `Gemm` `C`, recurrent `B`, `QLinearConv` `B`), or a constant of more than one element fed to `Add` or `Sub` with at most one dimension above 1 (a PyTorch Linear bias after `MatMul`) |
/// | `position-embedding` | a constant fed to `Add` with two or more dimensions above 1 (`[1, T, D]`: added to a token sequence) |
/// | `norm` | a parameter of `BatchNormalization`, `LayerNormalization`, `InstanceNormalization`, `GroupNormalization` or `RMSNormalization` |
/// | `scale` | a constant fed to `Mul` or `Div` |
/// | `quant` | a quantisation scale or zero point |
/// | `other` | any other floating-point constant |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TensorRole {
    Weight,
    Embedding,
    Recurrent,
    Bias,
    PositionEmbedding,
    Norm,
    Scale,
    Quant,
    Other,
}

impl TensorRole {
    /// Every role, in documentation order.
    pub const ALL: [TensorRole; 9] = [
        TensorRole::Weight,
        TensorRole::Embedding,
        TensorRole::Recurrent,
        TensorRole::Bias,
        TensorRole::PositionEmbedding,
        TensorRole::Norm,
        TensorRole::Scale,
        TensorRole::Quant,
        TensorRole::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TensorRole::Weight => "weight",
            TensorRole::Embedding => "embedding",
            TensorRole::Recurrent => "recurrent",
            TensorRole::Bias => "bias",
            TensorRole::PositionEmbedding => "position-embedding",
            TensorRole::Norm => "norm",
            TensorRole::Scale => "scale",
            TensorRole::Quant => "quant",
            TensorRole::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<TensorRole> {
        TensorRole::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// `(input index, role name, kind)` for each weight input of an ONNX operator.
pub fn roles(op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
    match onnx_roles(op_type) {
        [] => contrib_roles(op_type),
        table => table,
    }
}

/// The role table of an operator of `domain`: the default domain's, onnxruntime's
/// `com.microsoft` contrib operators', none for other domains.
pub fn roles_in(domain: &str, op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
    match domain {
        "" | "ai.onnx" => onnx_roles(op_type),
        "com.microsoft" => contrib_roles(op_type),
        _ => &[],
    }
}

/// The weight inputs of onnxruntime's `com.microsoft` operators that carry weights
/// (as its transformer optimizer and its 4-bit and 8-bit quantizers write them).
fn contrib_roles(op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
    use WeightKind::*;
    match op_type {
        "MatMulNBits" => &[(1, "B", Main), (2, "scales", Quant), (3, "zero_points", Quant), (5, "bias", Bias)],
        "MatMulBnb4" => &[(1, "B", Main), (2, "absmax", Quant)],
        "GatherBlockQuantized" => &[(0, "data", Main), (2, "scales", Quant), (3, "zero_points", Quant)],
        "DynamicQuantizeMatMul" => {
            &[(1, "B", Main), (2, "b_scale", Quant), (3, "b_zero_point", Quant), (4, "bias", Bias)]
        }
        "MatMulIntegerToFloat" => {
            &[(1, "B", Main), (3, "b_scale", Quant), (5, "b_zero_point", Quant), (6, "bias", Bias)]
        }
        "DynamicQuantizeLSTM" => &[
            (1, "W", Main),
            (2, "R", Main),
            (3, "B", Bias),
            (8, "W_scale", Quant),
            (9, "W_zero_point", Quant),
            (10, "R_scale", Quant),
            (11, "R_zero_point", Quant),
        ],
        "FusedMatMul" => &[(0, "A", Main), (1, "B", Main)],
        "FusedConv" => &[(1, "W", Main), (2, "B", Bias)],
        "FusedGemm" => &[(1, "B", Main), (2, "C", Bias)],
        "QGemm" => &[(3, "B", Main), (4, "b_scale", Quant), (5, "b_zero_point", Quant), (6, "C", Bias)],
        "Attention" => &[(1, "weights", Main), (2, "bias", Bias)],
        "QAttention" => {
            &[(1, "weight", Main), (2, "bias", Bias), (4, "weight_scale", Quant), (7, "weight_zero_point", Quant)]
        }
        "EmbedLayerNormalization" => &[
            (2, "word_embedding", Main),
            (3, "position_embedding", Main),
            (4, "segment_embedding", Main),
            (5, "gamma", Norm),
            (6, "beta", Norm),
        ],
        // quantize_dynamic's form of the above (a BERT the transformer optimizer fused): uint8
        // tables and normalisation, each with its scale and zero point.
        "QEmbedLayerNormalization" => &[
            (2, "word_embedding_quant", Main),
            (3, "position_embedding_quant", Main),
            (4, "segment_embedding_quant", Main),
            (5, "gamma_quant", Norm),
            (6, "beta_quant", Norm),
            (8, "word_embedding_scale", Quant),
            (9, "position_embedding_scale", Quant),
            (10, "segment_embedding_scale", Quant),
            (11, "gamma_scale", Quant),
            (12, "beta_scale", Quant),
            (13, "word_embedding_zero_point", Quant),
            (14, "position_embedding_zero_point", Quant),
            (15, "segment_embedding_zero_point", Quant),
            (16, "gamma_zero_point", Quant),
            (17, "beta_zero_point", Quant),
        ],
        "SkipLayerNormalization" => &[(2, "gamma", Norm), (3, "beta", Norm), (4, "bias", Bias)],
        "BiasGelu" | "FastGelu" => &[(1, "bias", Bias)],
        // QOperator quantisation's element-wise operators: a constant operand (a position
        // embedding, a bias added after a QLinearMatMul, a class token concatenated) is a
        // weight stored as integers.
        "QLinearAdd" | "QLinearMul" => &[(0, "A", Other), (3, "B", Other)],
        // A mixture of experts with 8-bit or 4-bit expert weights (onnxruntime-genai's MoE models).
        "QMoE" => &[
            (2, "fc1_experts_weights", Main),
            (3, "fc1_scales", Quant),
            (4, "fc1_experts_bias", Bias),
            (5, "fc2_experts_weights", Main),
            (6, "fc2_scales", Quant),
            (7, "fc2_experts_bias", Bias),
            (8, "fc3_experts_weights", Main),
            (9, "fc3_scales", Quant),
            (10, "fc3_experts_bias", Bias),
        ],
        "QLinearConcat" => &QLINEAR_CONCAT,
        _ => &[],
    }
}

/// `QLinearConcat`'s inputs: `Y_scale`, `Y_zero_point`, then (tensor, scale, zero point) for
/// each input; the tensors of its first 32 inputs.
const QLINEAR_CONCAT: [(usize, &str, WeightKind); 32] = {
    let mut table = [(0, "X", WeightKind::Other); 32];
    let mut i = 0;
    while i < table.len() {
        table[i].0 = 2 + 3 * i;
        i += 1;
    }
    table
};

/// The weight inputs of default-domain operators.
fn onnx_roles(op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
    use WeightKind::*;
    match op_type {
        "Conv" | "ConvTranspose" => &[(1, "W", Main), (2, "B", Bias)],
        "Gemm" => &[(0, "A", Main), (1, "B", Main), (2, "C", Bias)],
        "MatMul" => &[(0, "A", Main), (1, "B", Main)],
        "ConvInteger" => &[(1, "w", Main), (3, "w_zero_point", Quant)],
        "MatMulInteger" => &[(0, "A", Main), (1, "B", Main), (2, "a_zero_point", Quant), (3, "b_zero_point", Quant)],
        "QLinearConv" => &[(3, "w", Main), (4, "w_scale", Quant), (5, "w_zero_point", Quant), (8, "B", Bias)],
        "QLinearMatMul" => &[
            (0, "a", Main),
            (1, "a_scale", Quant),
            (2, "a_zero_point", Quant),
            (3, "b", Main),
            (4, "b_scale", Quant),
            (5, "b_zero_point", Quant),
        ],
        "LSTM" | "GRU" | "RNN" => &[(1, "W", Main), (2, "R", Main), (3, "B", Bias)],
        "Gather" => &[(0, "data", Main)],
        "BatchNormalization" => &[(1, "scale", Norm), (2, "B", Norm), (3, "input_mean", Norm), (4, "input_var", Norm)],
        "LayerNormalization" | "InstanceNormalization" => &[(1, "scale", Norm), (2, "B", Norm)],
        "GroupNormalization" => &[(1, "scale", Norm), (2, "bias", Norm)],
        "RMSNormalization" => &[(1, "scale", Norm)],
        _ => &[],
    }
}

/// The generic role name of input `index` (`input0`, `input1`, ...; `input` past 15), used
/// for inputs the role table does not name.
pub fn generic_role(index: usize) -> &'static str {
    const NAMES: [&str; 16] = [
        "input0", "input1", "input2", "input3", "input4", "input5", "input6", "input7", "input8", "input9", "input10",
        "input11", "input12", "input13", "input14", "input15",
    ];
    NAMES.get(index).copied().unwrap_or("input")
}

/// Whether `role` names an input of `op_type`: a role of its table, or a generic name.
pub fn is_role_of(op_type: &str, role: &str) -> bool {
    roles(op_type).iter().any(|(_, n, _)| *n == role) || role == "input" || (0..16).any(|i| generic_role(i) == role)
}

/// Operators whose first input passes a constant through to their output.
pub fn is_passthrough(op_type: &str) -> bool {
    op_type == "Concat"
        || matches!(
            op_type,
            "DequantizeLinear"
                | "QuantizeLinear"
                | "Cast"
                | "Transpose"
                | "Reshape"
                | "Identity"
                | "Squeeze"
                | "Unsqueeze"
                | "Flatten"
                | "Slice"
                | "Split"
                | "Expand"
                | "Tile"
        )
}

/// The data inputs of a pass-through node: every input of `Concat`, else the first.
pub(super) fn data_inputs(op_type: &str, n_inputs: usize) -> std::ops::Range<usize> {
    if op_type == "Concat" {
        0..n_inputs
    } else {
        0..n_inputs.min(1)
    }
}

/// The role a use gives its tensor (the rules of [`TensorRole`]).
pub(super) fn role_of(model: &Model, onnx: bool, op: &str, kind: WeightKind, tensor: TensorId) -> TensorRole {
    match kind {
        WeightKind::Main => match op {
            "Gather" | "GatherBlockQuantized" | "EmbedLayerNormalization" | "QEmbedLayerNormalization" => {
                TensorRole::Embedding
            }
            "LSTM" | "GRU" | "RNN" | "DynamicQuantizeLSTM" => TensorRole::Recurrent,
            _ => TensorRole::Weight,
        },
        WeightKind::Bias => TensorRole::Bias,
        WeightKind::Norm => TensorRole::Norm,
        WeightKind::Quant => TensorRole::Quant,
        WeightKind::Other if !onnx => TensorRole::Other,
        WeightKind::Other => {
            let t = &model.tensors[tensor];
            let wide = t.dims.iter().filter(|&&d| d > 1).count();
            match op {
                "Add" if wide >= 2 => TensorRole::PositionEmbedding,
                "Add" | "Sub" if t.numel > 1 => TensorRole::Bias,
                "Mul" | "Div" => TensorRole::Scale,
                _ => TensorRole::Other,
            }
        }
    }
}
