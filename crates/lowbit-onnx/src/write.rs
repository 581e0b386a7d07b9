use std::path::Path;

use lowbit_core::{
    Act, AutoPad, CoordMode, DType, Data, Dim, Graph, NearestMode, Op, PadMode, PoolAttrs, ResizeMode, Tensor, Unary,
    ValueInfo,
};
use prost::Message;

use crate::pb;
use crate::{OnnxError, Result};

fn dtype_to_onnx(d: DType) -> i32 {
    use pb::tensor_proto::DataType as D;
    (match d {
        DType::F32 => D::Float,
        DType::I64 => D::Int64,
        DType::I32 => D::Int32,
        DType::I8 => D::Int8,
        DType::U8 => D::Uint8,
        DType::Bool => D::Bool,
    }) as i32
}

/// Converts a [`Tensor`] into a `TensorProto` with little-endian `raw_data`.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> pb::TensorProto {
    let raw: Vec<u8> = match &t.data {
        Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
        Data::U8(v) => v.clone(),
        Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
    };
    pb::TensorProto {
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype_to_onnx(t.dtype())),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..Default::default()
    }
}

fn value_info(v: &ValueInfo) -> pb::ValueInfoProto {
    let shape = v.shape.as_ref().map(|dims| pb::TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| pb::tensor_shape_proto::Dimension {
                value: Some(match d {
                    Dim::Fixed(n) => pb::tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                    Dim::Sym(s) => pb::tensor_shape_proto::dimension::Value::DimParam(s.clone()),
                }),
                ..Default::default()
            })
            .collect(),
    });
    pb::ValueInfoProto {
        name: Some(v.name.clone()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(dtype_to_onnx(v.dtype)),
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    pb::AttributeProto { name: Some(name.into()), i: Some(i), r#type: Some(T::Int as i32), ..Default::default() }
}
fn attr_f(name: &str, f: f32) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    pb::AttributeProto { name: Some(name.into()), f: Some(f), r#type: Some(T::Float as i32), ..Default::default() }
}
fn attr_ints(name: &str, v: impl IntoIterator<Item = i64>) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    pb::AttributeProto {
        name: Some(name.into()),
        ints: v.into_iter().collect(),
        r#type: Some(T::Ints as i32),
        ..Default::default()
    }
}
fn attr_s(name: &str, s: &str) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    pb::AttributeProto {
        name: Some(name.into()),
        s: Some(s.as_bytes().to_vec()),
        r#type: Some(T::String as i32),
        ..Default::default()
    }
}
fn us(v: &[usize]) -> impl Iterator<Item = i64> + '_ {
    v.iter().map(|&x| x as i64)
}

fn window_attrs(out: &mut Vec<pb::AttributeProto>, k: &[usize], s: &[usize], p: &[usize], d: &[usize], ap: AutoPad) {
    if !k.is_empty() {
        out.push(attr_ints("kernel_shape", us(k)));
    }
    if !s.is_empty() {
        out.push(attr_ints("strides", us(s)));
    }
    if !p.is_empty() && ap == AutoPad::NotSet {
        out.push(attr_ints("pads", us(p)));
    }
    if !d.is_empty() {
        out.push(attr_ints("dilations", us(d)));
    }
    match ap {
        AutoPad::NotSet => {}
        AutoPad::SameUpper => out.push(attr_s("auto_pad", "SAME_UPPER")),
        AutoPad::SameLower => out.push(attr_s("auto_pad", "SAME_LOWER")),
        AutoPad::Valid => out.push(attr_s("auto_pad", "VALID")),
    }
}

fn pool(p: &PoolAttrs, avg: bool) -> Vec<pb::AttributeProto> {
    let mut a = vec![];
    window_attrs(&mut a, &p.kernel_shape, &p.strides, &p.pads, &p.dilations, p.auto_pad);
    if p.ceil_mode {
        a.push(attr_i("ceil_mode", 1));
    }
    if avg && p.count_include_pad {
        a.push(attr_i("count_include_pad", 1));
    }
    a
}

struct Emitter<'g> {
    g: &'g Graph,
    nodes: Vec<pb::NodeProto>,
    extra_init: Vec<pb::TensorProto>,
}

impl Emitter<'_> {
    fn node(
        &mut self,
        name: &str,
        op_type: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attribute: Vec<pb::AttributeProto>,
    ) {
        self.nodes.push(pb::NodeProto {
            name: Some(name.into()),
            op_type: Some(op_type.into()),
            input: inputs,
            output: outputs,
            attribute,
            ..Default::default()
        });
    }
    fn constant(&mut self, name: String, t: Tensor) -> String {
        self.extra_init.push(tensor_to_proto(&name, &t));
        name
    }
    /// Emits a standalone activation node computing `act(x)` into `y`.
    fn act(&mut self, node: &str, act: Act, x: String, y: String) {
        let opset = self.g.opset;
        match act {
            Act::None => self.node(node, "Identity", vec![x], vec![y], vec![]),
            Act::Relu => self.node(node, "Relu", vec![x], vec![y], vec![]),
            Act::Clip { lo, hi } if opset < 11 => {
                self.node(node, "Clip", vec![x], vec![y], vec![attr_f("min", lo), attr_f("max", hi)])
            }
            Act::Clip { lo, hi } => {
                let a = self.constant(format!("{node}_min"), Tensor::scalar_f32(lo));
                let b = self.constant(format!("{node}_max"), Tensor::scalar_f32(hi));
                self.node(node, "Clip", vec![x, a, b], vec![y], vec![])
            }
            Act::HardSigmoid { alpha, beta } => {
                self.node(node, "HardSigmoid", vec![x], vec![y], vec![attr_f("alpha", alpha), attr_f("beta", beta)])
            }
            Act::HardSwish if opset >= 14 => self.node(node, "HardSwish", vec![x], vec![y], vec![]),
            Act::HardSwish => {
                // HardSwish is opset 14; before that it is x * HardSigmoid(x; 1/6, 1/2).
                let hs = format!("{y}_hardsigmoid");
                self.node(
                    &format!("{node}_hardsigmoid"),
                    "HardSigmoid",
                    vec![x.clone()],
                    vec![hs.clone()],
                    vec![attr_f("alpha", 1.0 / 6.0), attr_f("beta", 0.5)],
                );
                self.node(node, "Mul", vec![x, hs], vec![y], vec![])
            }
        }
    }
}

fn strip_empty_tail(mut v: Vec<String>) -> Vec<String> {
    while v.last().is_some_and(|s| s.is_empty()) {
        v.pop();
    }
    v
}

/// Converts a graph into an ONNX `ModelProto` at the graph's opset. Fused activations are written as
/// separate standard nodes so any ONNX runtime can load the file.
pub fn to_model_proto(g: &Graph) -> pb::ModelProto {
    let mut e = Emitter { g, nodes: vec![], extra_init: vec![] };
    for n in &g.nodes {
        let mut ins = strip_empty_tail(n.inputs.clone());
        let outs = n.outputs.clone();
        // Attribute forms an older opset used, written as the inputs the file's opset wants (a
        // quantized file is raised to opset 13 at least).
        let opset = g.opset;
        let i64s = |v: &[i64]| Tensor::i64(vec![v.len()], v.to_vec());
        let mut attrs = vec![];
        let act = n.op.fused_act();
        let (main_out, act_out) = if act.is_none() {
            (outs.clone(), None)
        } else {
            (vec![format!("{}_preact", outs[0])], Some(outs[0].clone()))
        };
        let mut op_type = n.op.op_type();
        match &n.op {
            Op::Conv(c) => {
                window_attrs(&mut attrs, &c.kernel_shape, &c.strides, &c.pads, &c.dilations, c.auto_pad);
                attrs.push(attr_i("group", c.group as i64));
            }
            Op::BatchNorm { epsilon } => attrs.push(attr_f("epsilon", *epsilon)),
            Op::Clip { min, max } if opset >= 11 && (min.is_some() || max.is_some()) => {
                ins.truncate(1);
                let lo = min.map(|m| e.constant(format!("{}__min", n.name), Tensor::f32(vec![], vec![m])));
                ins.push(lo.unwrap_or_default());
                if let Some(m) = max {
                    ins.push(e.constant(format!("{}__max", n.name), Tensor::f32(vec![], vec![*m])));
                }
            }
            Op::Clip { min, max } => {
                if let Some(m) = min {
                    attrs.push(attr_f("min", *m));
                }
                if let Some(m) = max {
                    attrs.push(attr_f("max", *m));
                }
            }
            Op::HardSigmoid { alpha, beta } => {
                attrs.push(attr_f("alpha", *alpha));
                attrs.push(attr_f("beta", *beta));
            }
            Op::MaxPool(p) => attrs = pool(p, false),
            Op::AveragePool(p) => attrs = pool(p, true),
            Op::Gemm { alpha, beta, trans_a, trans_b, .. } => {
                attrs.push(attr_f("alpha", *alpha));
                attrs.push(attr_f("beta", *beta));
                attrs.push(attr_i("transA", *trans_a as i64));
                attrs.push(attr_i("transB", *trans_b as i64));
            }
            Op::Flatten { axis } => attrs.push(attr_i("axis", *axis)),
            Op::Reshape { allowzero } => {
                if *allowzero {
                    attrs.push(attr_i("allowzero", 1));
                }
            }
            Op::Concat { axis } => attrs.push(attr_i("axis", *axis)),
            Op::Softmax { axis, .. } => attrs.push(attr_i("axis", *axis)),
            Op::Shape { start, end } => {
                if *start != 0 {
                    attrs.push(attr_i("start", *start));
                }
                if let Some(end) = end {
                    attrs.push(attr_i("end", *end));
                }
            }
            Op::Gather { axis } => attrs.push(attr_i("axis", *axis)),
            Op::Unsqueeze { axes: Some(a) } | Op::Squeeze { axes: Some(a) } if opset >= 13 => {
                ins.truncate(1);
                ins.push(e.constant(format!("{}__axes", n.name), i64s(a)));
            }
            Op::Unsqueeze { axes } | Op::Squeeze { axes } => {
                if let Some(a) = axes {
                    attrs.push(attr_ints("axes", a.iter().copied()));
                }
            }
            Op::Cast { to } => attrs.push(attr_i("to", dtype_to_onnx(*to) as i64)),
            Op::Slice { attrs: Some((s, en, ax)) } if opset >= 10 => {
                ins.truncate(1);
                ins.push(e.constant(format!("{}__starts", n.name), i64s(s)));
                ins.push(e.constant(format!("{}__ends", n.name), i64s(en)));
                if !ax.is_empty() {
                    ins.push(e.constant(format!("{}__axes", n.name), i64s(ax)));
                }
            }
            Op::Slice { attrs: Some((s, en, ax)) } => {
                attrs.push(attr_ints("starts", s.iter().copied()));
                attrs.push(attr_ints("ends", en.iter().copied()));
                if !ax.is_empty() {
                    attrs.push(attr_ints("axes", ax.iter().copied()));
                }
            }
            Op::Transpose { perm: Some(p) } => attrs.push(attr_ints("perm", us(p))),
            Op::QuantizeLinear { axis } | Op::DequantizeLinear { axis } => {
                if *axis != 1 {
                    attrs.push(attr_i("axis", *axis));
                }
            }
            Op::DequantizeBlocked { axis, block } => {
                attrs.push(attr_i("axis", *axis));
                attrs.push(attr_i("block_size", *block as i64));
            }
            Op::Unary(u) => match u {
                Unary::LeakyRelu { alpha } | Unary::Elu { alpha } => attrs.push(attr_f("alpha", *alpha)),
                Unary::Selu { alpha, gamma } => {
                    attrs.push(attr_f("alpha", *alpha));
                    attrs.push(attr_f("gamma", *gamma));
                }
                _ => {}
            },
            Op::Reduce { kind, axes, keepdims, noop_with_empty_axes } => {
                let as_input = opset >= if *kind == lowbit_core::Reduce::Sum { 13 } else { 18 };
                if let Some(a) = axes.as_ref().filter(|a| !a.is_empty()) {
                    if as_input {
                        ins.truncate(1);
                        ins.push(e.constant(format!("{}__axes", n.name), i64s(a)));
                    } else {
                        attrs.push(attr_ints("axes", a.iter().copied()));
                    }
                }
                attrs.push(attr_i("keepdims", *keepdims as i64));
                if *noop_with_empty_axes {
                    attrs.push(attr_i("noop_with_empty_axes", 1));
                }
            }
            Op::ConvTranspose(c) => {
                window_attrs(&mut attrs, &c.kernel_shape, &c.strides, &c.pads, &c.dilations, c.auto_pad);
                attrs.push(attr_i("group", c.group as i64));
                if !c.output_padding.is_empty() {
                    attrs.push(attr_ints("output_padding", us(&c.output_padding)));
                }
                if !c.output_shape.is_empty() {
                    attrs.push(attr_ints("output_shape", us(&c.output_shape)));
                }
            }
            Op::Resize(r) if (r.upsample || r.opset10) && opset >= 11 => {
                // Upsample / Resize-10 (asymmetric coordinates, floor for nearest) as a Resize of
                // the file's opset: inputs X, roi (empty), scales.
                op_type = "Resize";
                attrs.push(attr_s("mode", if r.mode == ResizeMode::Linear { "linear" } else { "nearest" }));
                attrs.push(attr_s("coordinate_transformation_mode", "asymmetric"));
                attrs.push(attr_s("nearest_mode", "floor"));
                let scales = match &r.scales_attr {
                    Some(sc) => e.constant(format!("{}__scales", n.name), Tensor::f32(vec![sc.len()], sc.clone())),
                    None => ins.get(1).cloned().unwrap_or_default(),
                };
                let roi = e.constant(format!("{}__roi", n.name), Tensor::f32(vec![0], vec![]));
                ins.truncate(1);
                ins.push(roi);
                ins.push(scales);
            }
            Op::Resize(r) => {
                attrs.push(attr_s("mode", if r.mode == ResizeMode::Linear { "linear" } else { "nearest" }));
                if let Some(s) = &r.scales_attr {
                    attrs.push(pb::AttributeProto {
                        name: Some("scales".into()),
                        floats: s.clone(),
                        r#type: Some(pb::attribute_proto::AttributeType::Floats as i32),
                        ..Default::default()
                    });
                }
                if !r.upsample && !r.opset10 {
                    let coord = match r.coord {
                        CoordMode::HalfPixel => "half_pixel",
                        CoordMode::PytorchHalfPixel => "pytorch_half_pixel",
                        CoordMode::AlignCorners => "align_corners",
                        CoordMode::Asymmetric => "asymmetric",
                        CoordMode::TfHalfPixelForNn => "tf_half_pixel_for_nn",
                        CoordMode::HalfPixelSymmetric => "half_pixel_symmetric",
                        CoordMode::TfCropAndResize => "tf_crop_and_resize",
                    };
                    attrs.push(attr_s("coordinate_transformation_mode", coord));
                    let nearest = match r.nearest {
                        NearestMode::RoundPreferFloor => "round_prefer_floor",
                        NearestMode::RoundPreferCeil => "round_prefer_ceil",
                        NearestMode::Floor => "floor",
                        NearestMode::Ceil => "ceil",
                    };
                    attrs.push(attr_s("nearest_mode", nearest));
                    if r.exclude_outside {
                        attrs.push(attr_i("exclude_outside", 1));
                    }
                    if r.extrapolation_value != 0.0 {
                        attrs.push(attr_f("extrapolation_value", r.extrapolation_value));
                    }
                    attrs.push(attr_f("cubic_coeff_a", r.cubic_coeff_a));
                    if let Some(a) = &r.axes {
                        attrs.push(attr_ints("axes", a.iter().copied()));
                    }
                }
            }
            Op::Pad { mode, pads, value } => {
                let m = match mode {
                    PadMode::Constant => "constant",
                    PadMode::Reflect => "reflect",
                    PadMode::Edge => "edge",
                    PadMode::Wrap => "wrap",
                };
                attrs.push(attr_s("mode", m));
                if let Some(p) = pads.as_ref().filter(|_| opset >= 11) {
                    ins.truncate(1);
                    ins.push(e.constant(format!("{}__pads", n.name), i64s(p)));
                    if *value != 0.0 {
                        ins.push(e.constant(format!("{}__value", n.name), Tensor::f32(vec![], vec![*value])));
                    }
                } else if let Some(p) = pads {
                    attrs.push(attr_ints(if g.opset < 2 { "paddings" } else { "pads" }, p.iter().copied()));
                    attrs.push(attr_f("value", *value));
                }
            }
            Op::ConstantOfShape { value } => attrs.push(pb::AttributeProto {
                name: Some("value".into()),
                t: Some(tensor_to_proto("value", &value.clone().reshaped(vec![1]).unwrap_or_else(|_| value.clone()))),
                r#type: Some(pb::attribute_proto::AttributeType::Tensor as i32),
                ..Default::default()
            }),
            Op::DepthSpace { to_space, block, dcr } => {
                attrs.push(attr_i("blocksize", *block as i64));
                if *to_space {
                    attrs.push(attr_s("mode", if *dcr { "DCR" } else { "CRD" }));
                }
            }
            Op::InstanceNorm { epsilon } => attrs.push(attr_f("epsilon", *epsilon)),
            Op::LpNorm { axis, p } => {
                attrs.push(attr_i("axis", *axis));
                attrs.push(attr_i("p", *p as i64));
            }
            _ => {}
        }
        if matches!(n.op, Op::HardSwish) && g.opset < 14 {
            e.act(&n.name, Act::HardSwish, ins[0].clone(), outs[0].clone());
            continue;
        }
        e.node(&n.name, op_type, ins, main_out.clone(), attrs);
        if let Some(y) = act_out {
            e.act(&format!("{}_act", n.name), act, main_out[0].clone(), y);
        }
    }
    let mut initializer: Vec<pb::TensorProto> = g.initializers.iter().map(|(k, t)| tensor_to_proto(k, t)).collect();
    initializer.append(&mut e.extra_init);
    let ir_version = match g.opset {
        ..=12 => 7,
        13..=18 => 8,
        19..=20 => 9,
        _ => 10,
    };
    pb::ModelProto {
        ir_version: Some(ir_version),
        opset_import: vec![pb::OperatorSetIdProto { domain: Some(String::new()), version: Some(g.opset) }],
        producer_name: Some("lowbit".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(pb::GraphProto {
            node: e.nodes,
            name: Some(g.name.clone()),
            initializer,
            input: g.inputs.iter().map(value_info).collect(),
            output: g.outputs.iter().map(value_info).collect(),
            ..Default::default()
        }),
        metadata_props: g
            .metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) })
            .collect(),
        ..Default::default()
    }
}

/// Encodes a graph as ONNX bytes.
pub fn encode_model(g: &Graph) -> Vec<u8> {
    to_model_proto(g).encode_to_vec()
}

/// Writes a graph to `path` atomically: the bytes go to a temporary file beside it, then it is
/// renamed into place, so a failed write never leaves a partial model.
pub fn write_model(g: &Graph, path: &Path) -> Result<()> {
    let bytes = encode_model(g);
    let p = path.display().to_string();
    let tmp = path.with_extension(format!("onnx.tmp{}", std::process::id()));
    let io = |source| OnnxError::Io { path: p.clone(), source };
    std::fs::write(&tmp, &bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
