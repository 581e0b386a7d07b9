//! The closed set of operators lowbit understands, with their attributes already parsed.

use crate::DType;

/// An activation fused into the epilogue of a Conv or Gemm (or standing alone).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Act {
    #[default]
    None,
    Relu,
    /// `min(max(x, lo), hi)`; ReLU6 is `Clip { lo: 0, hi: 6 }`.
    Clip {
        lo: f32,
        hi: f32,
    },
    /// `max(0, min(1, alpha*x + beta))`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x * max(0, min(1, x/6 + 1/2))`.
    HardSwish,
}

impl Act {
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::None => x,
            Act::Relu => x.max(0.0),
            Act::Clip { lo, hi } => x.max(lo).min(hi),
            Act::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Act::HardSwish => x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
        }
    }
    pub fn is_none(self) -> bool {
        matches!(self, Act::None)
    }
    pub fn name(self) -> String {
        match self {
            Act::None => "none".into(),
            Act::Relu => "relu".into(),
            Act::Clip { lo, hi } => format!("clip[{lo},{hi}]"),
            Act::HardSigmoid { .. } => "hardsigmoid".into(),
            Act::HardSwish => "hardswish".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AutoPad {
    #[default]
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// Convolution attributes. Empty vectors mean "ONNX default" (resolved against the input's rank).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConvAttrs {
    pub kernel_shape: Vec<usize>,
    pub strides: Vec<usize>,
    /// ONNX order: all begins, then all ends.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub group: usize,
    pub auto_pad: AutoPad,
    /// Fused activation (set by the fusion pass; ONNX files never carry it).
    pub act: Act,
}

/// Pooling attributes (MaxPool / AveragePool).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PoolAttrs {
    pub kernel_shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub auto_pad: AutoPad,
    pub ceil_mode: bool,
    pub count_include_pad: bool,
}

/// Element-wise functions of one float input (ONNX names in [`Unary::name`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Tanh,
    Exp,
    Log,
    Sqrt,
    Softplus,
    Softsign,
    Mish,
    Erf,
    Neg,
    Abs,
    Reciprocal,
    Floor,
    Ceil,
    Round,
    /// `x` for `x >= 0`, `alpha * x` below.
    LeakyRelu {
        alpha: f32,
    },
    /// `x` for `x > 0`, `alpha * (exp(x) - 1)` below.
    Elu {
        alpha: f32,
    },
    /// `gamma * (x > 0 ? x : alpha * (exp(x) - 1))`.
    Selu {
        alpha: f32,
        gamma: f32,
    },
    /// `x * sigmoid(x)` (the ONNX Swish of opset 24; exporters mostly write `Mul(x, Sigmoid(x))`).
    Swish,
}

impl Unary {
    /// Every unary function and its ONNX operator name (attributes at their defaults).
    pub const ALL: [(&'static str, Unary); 18] = [
        ("Tanh", Unary::Tanh),
        ("Exp", Unary::Exp),
        ("Log", Unary::Log),
        ("Sqrt", Unary::Sqrt),
        ("Softplus", Unary::Softplus),
        ("Softsign", Unary::Softsign),
        ("Mish", Unary::Mish),
        ("Erf", Unary::Erf),
        ("Neg", Unary::Neg),
        ("Abs", Unary::Abs),
        ("Reciprocal", Unary::Reciprocal),
        ("Floor", Unary::Floor),
        ("Ceil", Unary::Ceil),
        ("Round", Unary::Round),
        ("LeakyRelu", Unary::LeakyRelu { alpha: 0.01 }),
        ("Elu", Unary::Elu { alpha: 1.0 }),
        ("Selu", Unary::Selu { alpha: 1.6732632, gamma: 1.050_701 }),
        ("Swish", Unary::Swish),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, u)| std::mem::discriminant(u) == std::mem::discriminant(&self)).map_or("?", |p| p.0)
    }

    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Unary::Tanh => x.tanh(),
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Sqrt => x.sqrt(),
            // ln(1 + e^x) without overflow for large x.
            Unary::Softplus => {
                if x > 20.0 {
                    x
                } else {
                    x.exp().ln_1p()
                }
            }
            Unary::Softsign => x / (1.0 + x.abs()),
            Unary::Mish => x * Unary::Softplus.apply(x).tanh(),
            Unary::Erf => erf(x),
            Unary::Neg => -x,
            Unary::Abs => x.abs(),
            Unary::Reciprocal => 1.0 / x,
            Unary::Floor => x.floor(),
            Unary::Ceil => x.ceil(),
            Unary::Round => x.round_ties_even(),
            Unary::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Unary::Elu { alpha } => {
                if x > 0.0 {
                    x
                } else {
                    alpha * x.exp_m1()
                }
            }
            Unary::Selu { alpha, gamma } => gamma * if x > 0.0 { x } else { alpha * x.exp_m1() },
            Unary::Swish => x / (1.0 + (-x).exp()),
        }
    }
}

/// The error function in f64 (Abramowitz-Stegun 7.1.26 is too coarse for ONNX's tests; this is
/// the series below 2.5 and the continued fraction above, good to about 1e-12).
pub fn erf(x: f32) -> f32 {
    let x = x as f64;
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(a) = 2/sqrt(pi) * sum_n (-1)^n a^(2n+1) / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        let a2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + 1/2/(a + 1/(a + 3/2/(a + 2/(a + ...)))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    (if x < 0.0 { -r } else { r }) as f32
}

/// The entry of an (ONNX name, value) table with this name.
pub fn by_name<T: Copy>(table: &[(&'static str, T)], name: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == name).map(|p| p.1)
}

/// Reductions over axes (ReduceMean/Max/Min/Sum/Prod/L1/L2/SumSquare/LogSumExp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Mean,
    Max,
    Min,
    Sum,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSumExp,
}

impl Reduce {
    pub const ALL: [(&'static str, Reduce); 9] = [
        ("ReduceMean", Reduce::Mean),
        ("ReduceMax", Reduce::Max),
        ("ReduceMin", Reduce::Min),
        ("ReduceSum", Reduce::Sum),
        ("ReduceProd", Reduce::Prod),
        ("ReduceL1", Reduce::L1),
        ("ReduceL2", Reduce::L2),
        ("ReduceSumSquare", Reduce::SumSquare),
        ("ReduceLogSumExp", Reduce::LogSumExp),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, r)| *r == self).map_or("?", |p| p.0)
    }
}

/// Element-wise ops over any number of broadcast inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variadic {
    Min,
    Max,
    Sum,
    Mean,
}

impl Variadic {
    pub const ALL: [(&'static str, Variadic); 4] =
        [("Min", Variadic::Min), ("Max", Variadic::Max), ("Sum", Variadic::Sum), ("Mean", Variadic::Mean)];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, r)| *r == self).map_or("?", |p| p.0)
    }
}

/// Comparisons (output bool).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Compare {
    pub const ALL: [(&'static str, Compare); 5] = [
        ("Equal", Compare::Equal),
        ("Less", Compare::Less),
        ("LessOrEqual", Compare::LessOrEqual),
        ("Greater", Compare::Greater),
        ("GreaterOrEqual", Compare::GreaterOrEqual),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, r)| *r == self).map_or("?", |p| p.0)
    }
    pub fn test(self, o: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Compare::Equal => o == Equal,
            Compare::Less => o == Less,
            Compare::LessOrEqual => o != Greater,
            Compare::Greater => o == Greater,
            Compare::GreaterOrEqual => o != Less,
        }
    }
}

/// Resize interpolation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    Nearest,
    Linear,
}

/// How an output coordinate maps to an input coordinate (ONNX `coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordMode {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    HalfPixelSymmetric,
    /// Samples the box `roi` (input 1) of the input; outside it, `extrapolation_value`.
    TfCropAndResize,
}

/// Rounding of a nearest-neighbour source coordinate (ONNX `nearest_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// Resize (opset 10+) and Upsample (`upsample`: scales from the attribute or input 1, asymmetric).
#[derive(Clone, Debug, PartialEq)]
pub struct ResizeAttrs {
    pub mode: ResizeMode,
    pub coord: CoordMode,
    pub nearest: NearestMode,
    /// Scales from Upsample's attribute (opset < 9).
    pub scales_attr: Option<Vec<f32>>,
    /// Upsample: the scales are input 1 (or the attribute); Resize opset 10: input 1 is scales.
    pub upsample: bool,
    /// Resize opset 10: inputs are (X, scales); 11+: (X, roi, scales, sizes).
    pub opset10: bool,
    /// Opset 18+: only these axes are resized (scales/sizes list them in this order).
    pub axes: Option<Vec<i64>>,
    /// Opset 18+ `keep_aspect_ratio_policy` other than "stretch" is refused at read time.
    pub exclude_outside: bool,
    pub extrapolation_value: f32,
    /// Antialiasing (opset 18) is refused at read time.
    pub cubic_coeff_a: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// ConvTranspose attributes; `output_shape`, when given, fixes the padding.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConvTransposeAttrs {
    pub kernel_shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub group: usize,
    pub auto_pad: AutoPad,
    pub output_padding: Vec<usize>,
    pub output_shape: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Conv(ConvAttrs),
    BatchNorm {
        epsilon: f32,
    },
    Relu,
    /// Bounds from attributes (opset < 11); from inputs 1 and 2 when those are present.
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    Sigmoid,
    /// ONNX Sign: -1, 0 or +1 (binary networks binarize with `Sign(Sign(x) + 0.5)`, +1 at zero).
    Sign,
    Add,
    Sub,
    Mul,
    Div,
    MaxPool(PoolAttrs),
    AveragePool(PoolAttrs),
    GlobalAveragePool,
    GlobalMaxPool,
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
        act: Act,
    },
    MatMul,
    Flatten {
        axis: i64,
    },
    Reshape {
        allowzero: bool,
    },
    Concat {
        axis: i64,
    },
    /// `coerce_2d`: opset < 13 semantics (flatten to 2-D at `axis`).
    Softmax {
        axis: i64,
        coerce_2d: bool,
    },
    Identity,
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Gather {
        axis: i64,
    },
    /// Axes from the attribute (opset < 13) or, when `None`, from input 1.
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Cast {
        to: DType,
    },
    /// Attribute form (opset < 10): starts, ends, axes. `None`: inputs 1..=4.
    Slice {
        attrs: Option<(Vec<i64>, Vec<i64>, Vec<i64>)>,
    },
    /// `y = saturate(round_half_even(x / scale) + zero_point)`; per-axis when scale is a vector.
    QuantizeLinear {
        axis: i64,
    },
    /// `y = (x - zero_point) * scale`; per-axis when scale is a vector.
    DequantizeLinear {
        axis: i64,
    },
    Transpose {
        perm: Option<Vec<usize>>,
    },
    Unary(Unary),
    /// `x >= 0 ? x : slope * x`, slope broadcast to x.
    PRelu,
    Pow,
    Variadic(Variadic),
    Compare(Compare),
    /// `cond ? x : y` (broadcast).
    Where,
    /// Axes from the attribute (older opsets) or input 1 (`None`).
    Reduce {
        kind: Reduce,
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    ConvTranspose(ConvTransposeAttrs),
    Resize(ResizeAttrs),
    /// Pads from the attribute (opset < 11, value in `value`) or inputs 1..=3 (`pads == None`).
    Pad {
        mode: PadMode,
        pads: Option<Vec<i64>>,
        value: f32,
    },
    /// A float tensor of the shape given by input 0, filled with `value` (f32 0 by default).
    ConstantOfShape {
        value: crate::Tensor,
    },
    Range,
    Expand,
    Tile,
    /// DepthToSpace (`dcr`: DCR order, else CRD) and SpaceToDepth (`to_space == false`).
    DepthSpace {
        to_space: bool,
        block: usize,
        dcr: bool,
    },
    InstanceNorm {
        epsilon: f32,
    },
    LpNorm {
        axis: i64,
        p: u8,
    },
    /// DequantizeLinear with opset-21 `block_size`: one scale per `block` consecutive elements
    /// along `axis`.
    DequantizeBlocked {
        axis: i64,
        block: usize,
    },
}

impl Op {
    /// The ONNX operator type this op is read from and written as.
    pub fn op_type(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::Relu => "Relu",
            Op::Clip { .. } => "Clip",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::HardSwish => "HardSwish",
            Op::Sigmoid => "Sigmoid",
            Op::Sign => "Sign",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Div => "Div",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool(_) => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Concat { .. } => "Concat",
            Op::Softmax { .. } => "Softmax",
            Op::Identity => "Identity",
            Op::Shape { .. } => "Shape",
            Op::Gather { .. } => "Gather",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Squeeze { .. } => "Squeeze",
            Op::Cast { .. } => "Cast",
            Op::Slice { .. } => "Slice",
            Op::Transpose { .. } => "Transpose",
            Op::QuantizeLinear { .. } => "QuantizeLinear",
            Op::DequantizeLinear { .. } | Op::DequantizeBlocked { .. } => "DequantizeLinear",
            Op::Unary(u) => u.name(),
            Op::PRelu => "PRelu",
            Op::Pow => "Pow",
            Op::Variadic(v) => v.name(),
            Op::Compare(c) => c.name(),
            Op::Where => "Where",
            Op::Reduce { kind, .. } => kind.name(),
            Op::ConvTranspose(_) => "ConvTranspose",
            Op::Resize(r) if r.upsample => "Upsample",
            Op::Resize(_) => "Resize",
            Op::Pad { .. } => "Pad",
            Op::ConstantOfShape { .. } => "ConstantOfShape",
            Op::Range => "Range",
            Op::Expand => "Expand",
            Op::Tile => "Tile",
            Op::DepthSpace { to_space: true, .. } => "DepthToSpace",
            Op::DepthSpace { .. } => "SpaceToDepth",
            Op::InstanceNorm { .. } => "InstanceNormalization",
            Op::LpNorm { .. } => "LpNormalization",
        }
    }

    /// The fused activation of a Conv or Gemm.
    pub fn fused_act(&self) -> Act {
        match self {
            Op::Conv(c) => c.act,
            Op::Gemm { act, .. } => *act,
            _ => Act::None,
        }
    }
}
