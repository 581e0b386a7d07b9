//! The compiled form of one plan step: what it computes ([`Kind`], with packed weights), where its
//! operands live ([`Operand`]), and what it reports ([`StepInfo`]).

use std::sync::Arc;

use lowbit_core::{Act, DType, Node, Tensor};
use lowbit_kernels::binary::BinConv;
use lowbit_kernels::eltwise::{BinOp, Broadcast};
use lowbit_kernels::fp32::conv::PackedConv;
use lowbit_kernels::geom::ConvGeom;
use lowbit_kernels::int8::ops::{self as qops, PoolGeom, QParams};
use lowbit_kernels::int8::{PackedB, QConv, QExpandDw, Requant};

/// What one step of the plan does, for reports.
#[derive(Clone, Debug)]
pub struct StepInfo {
    pub name: String,
    pub op: String,
    pub kernel: String,
    pub out_shape: Vec<usize>,
    pub macs: u64,
    pub params: usize,
    /// The value this step writes.
    pub output: String,
}

#[derive(Clone, Debug)]
pub(crate) enum Operand {
    /// A buffer in the arena: byte offset, element type, shape.
    Buf {
        off: usize,
        dtype: DType,
        shape: Vec<usize>,
        /// 4-D integer value stored NHWC (the integer kernels' layout).
        nhwc: bool,
    },
    Const(Arc<Tensor>),
}

impl Operand {
    pub(crate) fn len(&self) -> usize {
        match self {
            Operand::Buf { shape, .. } => shape.iter().product(),
            Operand::Const(t) => t.len(),
        }
    }
}

pub(crate) enum Kind {
    Conv {
        p: PackedConv,
        batch: usize,
    },
    /// f32 Conv whose output only a QuantizeLinear into NHWC reads, fused (`crate::blocks`).
    ConvQuant {
        p: PackedConv,
        q: QParams,
        batch: usize,
    },
    /// f32 ConvTranspose (GEMM + col2im).
    Deconv {
        p: lowbit_kernels::fp32::deconv::PackedDeconv,
        batch: usize,
    },
    Gemm {
        m: usize,
        n: usize,
        k: usize,
        b: Vec<f32>,
        prefill: Option<Vec<f32>>,
        trans_a: bool,
        act: Act,
    },
    Act(Act),
    /// f32 logistic function.
    Sigmoid,
    /// f32 PRelu, one slope per channel (axis 1) over planes of `plane` values.
    PRelu {
        slope: Vec<f32>,
        plane: usize,
    },
    Binary {
        op: BinOp,
        bc: Broadcast,
    },
    Pool {
        g: ConvGeom,
        planes: usize,
        max: bool,
        cip: bool,
        pb: usize,
        pr: usize,
    },
    GlobalPool {
        plane: usize,
        max: bool,
    },
    /// f32 Concat: per outer block, each input's `inners[i]` values.
    Concat {
        outer: usize,
        inners: Vec<usize>,
    },
    /// f32 Resize of the last two axes of NCHW (nearest or linear; `None`: axis unchanged).
    Resize2d {
        planes: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        rows: Option<lowbit_kernels::resample::Taps>,
        cols: Option<lowbit_kernels::resample::Taps>,
    },
    /// Per-tensor QuantizeLinear f32 -> u8/i8 (NCHW -> NHWC with a layout).
    Quantize {
        q: QParams,
        layout: qops::Layout,
    },
    /// Per-tensor DequantizeLinear u8/i8 -> f32 (NHWC -> NCHW with a layout).
    Dequantize {
        q: QParams,
        layout: qops::Layout,
    },
    QConv {
        c: QConv,
        batch: usize,
    },
    /// An expansion 1x1 and the depthwise convolution of its output, fused (`crate::blocks`).
    QExpandDw {
        f: Box<QExpandDw>,
        batch: usize,
    },
    /// Binary convolution; `zx`: zero point of a uint8 NHWC input, `None` for f32 NCHW.
    BinConv {
        c: BinConv,
        batch: usize,
        zx: Option<u8>,
    },
    QGemm {
        b: PackedB,
        rq: Requant,
        m: usize,
        k: usize,
    },
    QAdd(qops::AddQ),
    QLut(Box<[u8; 256]>),
    /// One table per channel of NHWC (or `[n][c]`) bytes.
    QLutChannels(Vec<[u8; 256]>),
    /// Same shapes, or with `gate = Some((n, plane, c))` `b` scales each channel of NHWC `a` (`[n][plane][c]`).
    QMul {
        p: qops::MulQ,
        gate: Option<(usize, usize, usize)>,
    },
    QGap {
        n: usize,
        plane: usize,
        c: usize,
        qi: QParams,
        qo: QParams,
    },
    QMaxPool {
        g: PoolGeom,
        n: usize,
        signed: bool,
    },
    /// Quantized ConvTranspose (NHWC bytes in and out).
    QDeconv {
        d: lowbit_kernels::int8::QDeconv,
        batch: usize,
    },
    /// PRelu on `[pixels][c]` bytes, one slope per channel.
    QPRelu {
        qi: QParams,
        qo: QParams,
        slope: Vec<f32>,
    },
    /// Concat of bytes: per outer block, each input's `inners[i]` bytes, through its requantization table where its
    /// parameters are not the output's.
    QConcat {
        outer: usize,
        inners: Vec<usize>,
        tables: Vec<Option<Box<[u8; 256]>>>,
    },
    /// Resize of NHWC bytes (height and width).
    QResize {
        n: usize,
        c: usize,
        hw: (usize, usize),
        ohw: (usize, usize),
        rows: Option<lowbit_kernels::resample::Taps>,
        cols: Option<lowbit_kernels::resample::Taps>,
        qi: QParams,
        qo: QParams,
    },
    Generic(Node),
}

pub(crate) struct Step {
    pub kind: Kind,
    pub ins: Vec<Option<Operand>>,
    pub out: Operand,
}

pub(crate) fn shape_of(o: &Operand) -> Vec<usize> {
    match o {
        Operand::Buf { shape, .. } => shape.clone(),
        Operand::Const(t) => t.shape.clone(),
    }
}

impl Kind {
    /// Runs on integer (or binary) kernels?
    pub(crate) fn is_integer(&self) -> bool {
        matches!(
            self,
            Kind::QConv { .. }
                | Kind::QExpandDw { .. }
                | Kind::BinConv { .. }
                | Kind::QGemm { .. }
                | Kind::QAdd(_)
                | Kind::QLut(_)
                | Kind::QLutChannels(_)
                | Kind::QMul { .. }
                | Kind::QGap { .. }
                | Kind::QMaxPool { .. }
                | Kind::QPRelu { .. }
                | Kind::QDeconv { .. }
                | Kind::QConcat { .. }
                | Kind::QResize { .. }
        )
    }

    /// Holds its weights packed in its own layout (the graph's constant copies can go).
    pub(crate) fn packs_weights(&self) -> bool {
        matches!(self, Kind::Conv { .. } | Kind::ConvQuant { .. } | Kind::Gemm { .. })
    }

    /// Bytes of packed weights and per-channel parameters held.
    pub(crate) fn weight_bytes(&self) -> usize {
        match self {
            Kind::Conv { p, .. } | Kind::ConvQuant { p, .. } => p.weight_bytes(),
            Kind::Gemm { b, prefill, .. } => (b.len() + prefill.as_ref().map_or(0, |p| p.len())) * 4,
            Kind::QConv { c, .. } => c.weight_bytes(),
            Kind::QExpandDw { f, .. } => f.weight_bytes(),
            Kind::QDeconv { d, .. } => d.weight_bytes(),
            Kind::BinConv { c, .. } => c.weight_bytes(),
            Kind::QGemm { b, rq, .. } => b.bytes() + rq.bytes(),
            _ => 0,
        }
    }
}
