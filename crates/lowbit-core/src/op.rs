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
            Op::DequantizeLinear { .. } => "DequantizeLinear",
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
