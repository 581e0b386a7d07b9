//! What [`super::build_qdq`] is asked to do ([`QdqConfig`]) and the node classes its passes share.

use std::collections::{HashMap, HashSet};

use lowbit_core::{Graph, Node, Op};

use crate::observer::Method;
use crate::scheme::{Kind, Mode, QParams};

/// What to quantize and how.
#[derive(Clone, Debug)]
pub struct QdqConfig {
    pub weight_bits: u8,
    pub act_bits: u8,
    pub per_channel: bool,
    pub method: Method,
    /// Search each weight channel's clipping range by MSE (on by default below 8 bits).
    pub weight_mse: bool,
    /// Nodes (by name) left in float.
    pub keep_float: HashSet<String>,
    /// Per-node weight bit widths overriding `weight_bits` (mixed precision).
    pub weight_bits_for: HashMap<String, u8>,
    /// Per-value activation bit widths overriding `act_bits` (by value name; see
    /// [`first_last_overrides`]).
    pub act_bits_for: HashMap<String, u8>,
    /// Keep the first compute layer (the one reading the model input) in float.
    pub skip_first: bool,
    /// Keep the last compute layer (the one writing the model output) in float.
    pub skip_last: bool,
    /// The model input gets no Q/DQ pair: the layers reading it compute in float from the exact
    /// input, with their weights still quantized (their biases stay float) and their outputs
    /// quantized as usual. For inputs whose values one 8-bit grid cannot hold (images normalised
    /// per channel), see [`crate::select::choose_input_precision`].
    pub float_input: bool,
    /// Correct each layer's bias for the mean shift its weight quantization causes, using the
    /// calibration means of its input channels (empirical bias correction).
    pub bias_correction: bool,
    /// Activation parameters (scale, zero point) by value name, used instead of calibration
    /// (quantization-aware training exports its learned steps this way).
    pub act_override: HashMap<String, (f32, i32)>,
    /// Weight scales (one per output channel, or one) by node name, used instead of the range or
    /// MSE search.
    pub weight_scale_override: HashMap<String, Vec<f32>>,
    /// Weight integers (in the weight tensor's own layout) and their scales (one per output
    /// channel) by node name, written as they are: AdaRound's learned rounding.
    pub weight_int_override: HashMap<String, (Vec<i32>, Vec<f32>)>,
    /// Float biases by node name replacing the layer's bias and its bias correction.
    pub bias_override: HashMap<String, Vec<f32>>,
    /// Binary convolutions (by node name): weights `sign(w)` (`+1` at zero) with the per-channel
    /// scale `mean |w|`, and the input binarized to `±1` by `Sign(Sign(x) + 0.5)` followed by an
    /// int8 Q/DQ pair with scale `1/BINARY_LEVEL`; the bias is int32 with the accumulator scale
    /// (standard ONNX that any runtime executes, ONNX Runtime as QLinearConv; lowbit's plan reads
    /// the pattern back as one xnor-popcount convolution).
    pub binary: HashSet<String>,
    /// The values weights may take: linear symmetric (default), power-of-two scales, logarithmic
    /// or k-means shared. Every kind is written as int8 weights of a standard DequantizeLinear
    /// (see [`crate::scheme::log2_weights_int8`], [`crate::scheme::kmeans_weights_int8`]), with a
    /// `lowbit.quant.scheme.<node>` metadata entry naming the scheme; layers raised to 8 bits by
    /// mixed precision are linear.
    pub weight_kind: Kind,
    /// k-means results by (node, bits, weight fingerprint), shared by clones of this configuration.
    pub kmeans_cache: KMeansCache,
}

/// See [`QdqConfig::kmeans_cache`].
pub type KMeansCache = std::sync::Arc<std::sync::Mutex<HashMap<(String, u8, u64), (Vec<i32>, QParams, Vec<i32>)>>>;

/// FNV-1a over the bits of `w` (tells apart weight tensors that share a node name).
pub(crate) fn weights_fingerprint(w: &[f32]) -> u64 {
    w.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3))
}

impl Default for QdqConfig {
    fn default() -> Self {
        QdqConfig {
            weight_bits: 8,
            act_bits: 8,
            per_channel: true,
            method: Method::MinMax,
            weight_mse: false,
            keep_float: HashSet::new(),
            weight_bits_for: HashMap::new(),
            act_bits_for: HashMap::new(),
            skip_first: false,
            skip_last: false,
            float_input: false,
            bias_correction: true,
            act_override: HashMap::new(),
            weight_scale_override: HashMap::new(),
            weight_int_override: HashMap::new(),
            bias_override: HashMap::new(),
            binary: HashSet::new(),
            weight_kind: Kind::Linear(Mode::Symmetric),
            kmeans_cache: Default::default(),
        }
    }
}

pub(crate) fn is_compute(n: &Node, g: &Graph) -> bool {
    match n.op {
        Op::Conv(_) | Op::Gemm { .. } => n.input(1).is_some_and(|w| g.initializers.contains_key(w)),
        // Weights `[C_in][C_out][kh][kw]`: per-channel scales on axis 1, which are the output channels with one group.
        Op::ConvTranspose(ref c) => c.group <= 1 && n.input(1).is_some_and(|w| g.initializers.contains_key(w)),
        Op::MatMul => n.input(1).is_some_and(|w| g.initializers.get(w).is_some_and(|t| t.rank() == 2)),
        _ => false,
    }
}

pub(crate) fn is_passthrough(op: &Op) -> bool {
    matches!(
        op,
        Op::MaxPool(_)
            | Op::Reshape { .. }
            | Op::Flatten { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Identity
    )
}

/// Ops whose inputs and output are all quantized (an element-wise activation between Q/DQ runs as a byte table, a
/// Mul of two quantized tensors as an integer product).
pub(crate) fn is_qio(op: &Op) -> bool {
    matches!(
        op,
        Op::Add
            | Op::Mul
            | Op::Concat { .. }
            | Op::AveragePool(_)
            | Op::GlobalAveragePool
            | Op::HardSwish
            | Op::HardSigmoid { .. }
    )
}

impl QdqConfig {
    /// The activation bit width of value `v`.
    pub fn act_bits_of(&self, v: &str) -> u8 {
        self.act_bits_for.get(v).copied().unwrap_or(self.act_bits)
    }
}
