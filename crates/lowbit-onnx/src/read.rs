use std::collections::HashSet;
use std::path::Path;

use lowbit_core::op::by_name;
use lowbit_core::{
    AutoPad, Compare, ConvAttrs, DType, Data, Dim, Error, Graph, Node, Op, PoolAttrs, Reduce, Tensor, Unary, ValueInfo,
    Variadic,
};
use prost::Message;

use crate::pb;
use crate::{OnnxError, Result};

/// The newest ONNX IR version lowbit reads (that of ONNX 1.23).
pub const MAX_IR_VERSION: i64 = 14;

/// Reads and decodes an ONNX file. Errors carry the file's path.
pub fn read_model(path: &Path) -> Result<Graph> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io { path: p.clone(), source })?;
    decode_model(&bytes).map_err(|e| e.with_path(&p))
}

fn decode_err(reason: impl Into<String>) -> OnnxError {
    OnnxError::Decode { path: "<memory>".into(), reason: reason.into() }
}

/// Decodes an ONNX model from bytes: nodes become [`Op`]s, `Constant` nodes become initializers.
pub fn decode_model(bytes: &[u8]) -> Result<Graph> {
    if bytes.is_empty() {
        return Err(decode_err("file is empty"));
    }
    let m = pb::ModelProto::decode(bytes).map_err(|e| decode_err(format!("protobuf decode failed ({e})")))?;
    let mut opset = None;
    for o in &m.opset_import {
        if matches!(o.domain(), "" | "ai.onnx") {
            opset = Some(o.version());
        }
    }
    let opset = opset.ok_or_else(|| decode_err("no default-domain opset_import (is this an ONNX model?)"))?;
    if m.ir_version() > MAX_IR_VERSION {
        return Err(decode_err(format!(
            "IR version {} is newer than lowbit reads (up to {MAX_IR_VERSION})",
            m.ir_version()
        )));
    }
    let gp = m.graph.as_ref().ok_or_else(|| decode_err("model has no graph"))?;
    let mut g = Graph { name: gp.name().to_string(), opset, ..Default::default() };
    g.metadata = m.metadata_props.iter().map(|e| (e.key().to_string(), e.value().to_string())).collect();
    for t in &gp.initializer {
        let name = t.name().to_string();
        let v = tensor_from_proto(t).map_err(|e| e.in_value(&name))?;
        g.initializers.insert(name, v);
    }
    if !gp.sparse_initializer.is_empty() {
        return Err(decode_err("sparse initializers are not supported"));
    }
    for vi in &gp.input {
        g.inputs.push(value_info(vi)?);
    }
    for vi in &gp.output {
        g.outputs.push(value_info(vi)?);
    }
    let mut seen_names = HashSet::new();
    let mut missing = Missing::default();
    // Every name a node of the file uses, so that invented names never collide (built once: the
    // reader stays linear in the number of unnamed nodes).
    let taken: HashSet<&str> = gp.node.iter().map(|m| m.name()).collect();
    for (i, n) in gp.node.iter().enumerate() {
        let name = if n.name().is_empty() || !seen_names.insert(n.name().to_string()) {
            // A fresh name that no node of the file uses.
            let mut k = 0usize;
            loop {
                let cand =
                    if k == 0 { format!("{}_{}", n.op_type(), i) } else { format!("{}_{}_{}", n.op_type(), i, k) };
                if !taken.contains(cand.as_str()) && seen_names.insert(cand.clone()) {
                    break cand;
                }
                k += 1;
            }
        } else {
            n.name().to_string()
        };
        if !matches!(n.domain(), "" | "ai.onnx") {
            missing.add(&format!("{}:{}", n.domain(), n.op_type()), &name);
            continue;
        }
        if n.op_type() == "Constant" {
            let out = n.output.first().ok_or_else(|| Error::node(&name, "Constant without output"))?;
            g.initializers.insert(out.clone(), constant_value(n).map_err(|e| e.in_node(&name))?);
            continue;
        }
        let op = match parse_op(n, &name, opset) {
            Err(Error::Unsupported { reason, .. }) if reason == NOT_IMPLEMENTED => {
                missing.add(n.op_type(), &name);
                continue;
            }
            r => r.map_err(|e| e.in_node(&name))?,
        };
        if !missing.is_empty() {
            continue; // only the list of missing operators is reported
        }
        if n.output.is_empty() {
            return Err(Error::node(&name, "node has no outputs").into());
        }
        // Trailing empty inputs mean "absent"; drop them so reading what we write is an identity.
        let mut inputs = n.input.clone();
        if n.op_type() == "Dropout" {
            inputs.truncate(1); // read as Identity; its ratio is unused at inference
        }
        while inputs.last().is_some_and(|s| s.is_empty()) {
            inputs.pop();
        }
        g.nodes.push(Node { name, op, inputs, outputs: n.output.clone() });
    }
    missing.check()?;
    g.sort_and_check()?;
    lowbit_core::validate::validate(&g)?;
    Ok(g)
}

const NOT_IMPLEMENTED: &str = "operator is not implemented by lowbit";

/// Every operator of a file lowbit does not implement, counted, so one error lists them all.
#[derive(Default)]
struct Missing(Vec<(String, usize, String)>);

impl Missing {
    fn add(&mut self, op: &str, node: &str) {
        match self.0.iter_mut().find(|(o, _, _)| o == op) {
            Some(e) => e.1 += 1,
            None => self.0.push((op.to_string(), 1, node.to_string())),
        }
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn check(&self) -> lowbit_core::Result<()> {
        let Some((op, _, node)) = self.0.first() else { return Ok(()) };
        let total: usize = self.0.iter().map(|e| e.1).sum();
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(o, k, n)| format!("{o} ({k} node{}, first '{n}')", if *k == 1 { "" } else { "s" }))
            .collect();
        Err(Error::Unsupported {
            node: node.clone(),
            op: op.clone(),
            reason: format!(
                "{} operator type(s) in {total} node(s) are not implemented by lowbit: {}",
                self.0.len(),
                list.join(", ")
            ),
        })
    }
}

trait InValue {
    fn in_value(self, v: &str) -> Self;
}
impl InValue for Error {
    fn in_value(self, v: &str) -> Self {
        match self {
            Error::Invalid(r) => Error::value(v, r),
            e => e,
        }
    }
}
impl InValue for OnnxError {
    fn in_value(self, v: &str) -> Self {
        match self {
            OnnxError::Model { path, source } => OnnxError::Model { path, source: source.in_value(v) },
            e => e,
        }
    }
}

pub(crate) fn dtype_from_onnx(t: i32) -> std::result::Result<DType, String> {
    use pb::tensor_proto::DataType as D;
    Ok(match D::try_from(t) {
        Ok(D::Float) => DType::F32,
        Ok(D::Int64) => DType::I64,
        Ok(D::Int32) => DType::I32,
        Ok(D::Int8) => DType::I8,
        Ok(D::Uint8) => DType::U8,
        Ok(D::Bool) => DType::Bool,
        Ok(d) => return Err(format!("element type {} is not supported", d.as_str_name())),
        Err(_) => return Err(format!("unknown element type {t}")),
    })
}

fn value_info(vi: &pb::ValueInfoProto) -> Result<ValueInfo> {
    let name = vi.name().to_string();
    let bad = |r: String| OnnxError::from(Error::value(&name, r));
    let tt = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t,
        Some(_) => return Err(bad("only tensor values are supported".into())),
        None => return Ok(ValueInfo { name, dtype: DType::F32, shape: None }),
    };
    let dtype = dtype_from_onnx(tt.elem_type()).map_err(bad)?;
    let shape = tt.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as usize),
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => Dim::Sym(p.clone()),
                _ => Dim::Sym("?".into()),
            })
            .collect()
    });
    Ok(ValueInfo { name, dtype, shape })
}

/// Converts a `TensorProto` (raw or typed storage) into a [`Tensor`], checking sizes.
pub fn tensor_from_proto(t: &pb::TensorProto) -> Result<Tensor> {
    let err = |r: String| OnnxError::from(Error::Invalid(r));
    if !t.external_data.is_empty() || t.data_location() == pb::tensor_proto::DataLocation::External {
        return Err(err("external tensor data is not supported".into()));
    }
    let dtype = dtype_from_onnx(t.data_type()).map_err(err)?;
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut n: usize = 1;
    for &d in &t.dims {
        if d < 0 {
            return Err(err(format!("negative dimension {d}")));
        }
        shape.push(d as usize);
        n = n.checked_mul(d as usize).ok_or_else(|| err("tensor size overflows".into()))?;
    }
    let data = if let Some(raw) = &t.raw_data {
        let esz = dtype.size();
        if n.checked_mul(esz) != Some(raw.len()) {
            return Err(err(format!(
                "raw data has {} bytes, shape {:?} of {} needs {}",
                raw.len(),
                shape,
                dtype.name(),
                n.saturating_mul(esz)
            )));
        }
        match dtype {
            DType::F32 => Data::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
            DType::I64 => Data::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
            DType::I32 => Data::I32(raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()),
            DType::I8 => Data::I8(raw.iter().map(|&b| b as i8).collect()),
            DType::U8 => Data::U8(raw.clone()),
            DType::Bool => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
        }
    } else {
        let len = match dtype {
            DType::F32 => t.float_data.len(),
            DType::I64 => t.int64_data.len(),
            _ => t.int32_data.len(),
        };
        if len != n {
            return Err(err(format!("tensor has {len} values, shape {shape:?} needs {n}")));
        }
        match dtype {
            DType::F32 => Data::F32(t.float_data.clone()),
            DType::I64 => Data::I64(t.int64_data.clone()),
            DType::I32 => Data::I32(t.int32_data.clone()),
            DType::I8 => Data::I8(t.int32_data.iter().map(|&v| v as i8).collect()),
            DType::U8 => Data::U8(t.int32_data.iter().map(|&v| v as u8).collect()),
            DType::Bool => Data::Bool(t.int32_data.iter().map(|&v| v != 0).collect()),
        }
    };
    Ok(Tensor { shape, data })
}

struct Attrs<'a>(&'a [pb::AttributeProto]);

impl<'a> Attrs<'a> {
    fn get(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.0.iter().find(|a| a.name() == name)
    }
    fn int(&self, name: &str, dflt: i64) -> i64 {
        self.get(name).and_then(|a| a.i).unwrap_or(dflt)
    }
    fn float(&self, name: &str, dflt: f32) -> f32 {
        self.get(name).and_then(|a| a.f).unwrap_or(dflt)
    }
    fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }
    fn usizes(&self, name: &str) -> lowbit_core::Result<Vec<usize>> {
        self.ints(name)
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| Error::Invalid(format!("attribute {name} has negative value {v}"))))
            .collect()
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
    }
    fn auto_pad(&self) -> lowbit_core::Result<AutoPad> {
        Ok(match self.string("auto_pad").as_deref() {
            None | Some("NOTSET") | Some("") => AutoPad::NotSet,
            Some("SAME_UPPER") => AutoPad::SameUpper,
            Some("SAME_LOWER") => AutoPad::SameLower,
            Some("VALID") => AutoPad::Valid,
            Some(o) => return Err(Error::Invalid(format!("unknown auto_pad '{o}'"))),
        })
    }
}

fn constant_value(n: &pb::NodeProto) -> lowbit_core::Result<Tensor> {
    let a = Attrs(&n.attribute);
    if let Some(t) = a.get("value").and_then(|a| a.t.as_ref()) {
        return tensor_from_proto(t).map_err(|e| Error::Invalid(e.to_string()));
    }
    if let Some(f) = a.get("value_float").and_then(|a| a.f) {
        return Ok(Tensor::scalar_f32(f));
    }
    if let Some(at) = a.get("value_floats") {
        return Ok(Tensor::f32(vec![at.floats.len()], at.floats.clone()));
    }
    if let Some(i) = a.get("value_int").and_then(|a| a.i) {
        return Ok(Tensor::i64(vec![], vec![i]));
    }
    if let Some(at) = a.get("value_ints") {
        return Ok(Tensor::i64(vec![at.ints.len()], at.ints.clone()));
    }
    Err(Error::Unsupported {
        node: n.name().into(),
        op: "Constant".into(),
        reason: "only tensor/float/int values are supported".into(),
    })
}

/// Explicit pads, ignored (as the spec says) when auto_pad is set.
fn pads_of(a: &Attrs) -> lowbit_core::Result<Vec<usize>> {
    Ok(if a.auto_pad()? == AutoPad::NotSet { a.usizes("pads")? } else { vec![] })
}

fn pool_attrs(a: &Attrs) -> lowbit_core::Result<PoolAttrs> {
    let p = PoolAttrs {
        kernel_shape: a.usizes("kernel_shape")?,
        strides: a.usizes("strides")?,
        pads: pads_of(a)?,
        dilations: a.usizes("dilations")?,
        auto_pad: a.auto_pad()?,
        ceil_mode: a.int("ceil_mode", 0) != 0,
        count_include_pad: a.int("count_include_pad", 0) != 0,
    };
    if p.kernel_shape.is_empty() {
        return Err(Error::Invalid("pooling needs kernel_shape".into()));
    }
    Ok(p)
}

/// Parses one node's op type and attributes into an [`Op`].
fn parse_op(n: &pb::NodeProto, name: &str, opset: i64) -> lowbit_core::Result<Op> {
    let a = Attrs(&n.attribute);
    let unsupported =
        |reason: &str| Error::Unsupported { node: name.into(), op: n.op_type().into(), reason: reason.into() };
    let op = match n.op_type() {
        "Conv" => Op::Conv(ConvAttrs {
            kernel_shape: a.usizes("kernel_shape")?,
            strides: a.usizes("strides")?,
            pads: pads_of(&a)?,
            dilations: a.usizes("dilations")?,
            group: usize::try_from(a.int("group", 1))
                .ok()
                .filter(|&g| g >= 1)
                .ok_or_else(|| Error::Invalid("group must be >= 1".into()))?,
            auto_pad: a.auto_pad()?,
            act: Default::default(),
        }),
        "BatchNormalization" => {
            if a.int("training_mode", 0) != 0 || n.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err(unsupported("training mode is not supported"));
            }
            Op::BatchNorm { epsilon: a.float("epsilon", 1e-5) }
        }
        "Relu" => Op::Relu,
        "Clip" => Op::Clip { min: a.get("min").and_then(|x| x.f), max: a.get("max").and_then(|x| x.f) },
        "HardSigmoid" => Op::HardSigmoid { alpha: a.float("alpha", 0.2), beta: a.float("beta", 0.5) },
        "HardSwish" => Op::HardSwish,
        "Sigmoid" => Op::Sigmoid,
        "Sign" => Op::Sign,
        "Add" => Op::Add,
        "Sub" => Op::Sub,
        "Mul" => Op::Mul,
        "Div" => Op::Div,
        "MaxPool" => {
            if n.output.len() > 1 && !n.output[1].is_empty() {
                return Err(unsupported("the Indices output is not supported"));
            }
            if a.int("storage_order", 0) != 0 {
                return Err(unsupported("storage_order=1 is not supported"));
            }
            Op::MaxPool(pool_attrs(&a)?)
        }
        "AveragePool" => Op::AveragePool(pool_attrs(&a)?),
        "GlobalAveragePool" => Op::GlobalAveragePool,
        "GlobalMaxPool" => Op::GlobalMaxPool,
        "Gemm" => Op::Gemm {
            alpha: a.float("alpha", 1.0),
            beta: a.float("beta", 1.0),
            trans_a: a.int("transA", 0) != 0,
            trans_b: a.int("transB", 0) != 0,
            act: Default::default(),
        },
        "MatMul" => Op::MatMul,
        "Flatten" => Op::Flatten { axis: a.int("axis", 1) },
        "Reshape" => Op::Reshape { allowzero: a.int("allowzero", 0) != 0 },
        "Concat" => Op::Concat {
            axis: a.get("axis").and_then(|x| x.i).ok_or_else(|| Error::Invalid("Concat needs axis".into()))?,
        },
        "Softmax" => Op::Softmax { axis: a.int("axis", if opset < 13 { 1 } else { -1 }), coerce_2d: opset < 13 },
        "Identity" => Op::Identity,
        "Shape" => Op::Shape { start: a.int("start", 0), end: a.get("end").and_then(|x| x.i) },
        "Gather" => Op::Gather { axis: a.int("axis", 0) },
        "Unsqueeze" => Op::Unsqueeze { axes: a.get("axes").map(|x| x.ints.clone()) },
        "Squeeze" => Op::Squeeze { axes: a.get("axes").map(|x| x.ints.clone()) },
        "Cast" => Op::Cast {
            to: dtype_from_onnx(a.int("to", 0) as i32).map_err(|r| Error::Unsupported {
                node: name.into(),
                op: "Cast".into(),
                reason: r,
            })?,
        },
        "Slice" => Op::Slice {
            attrs: if opset < 10 { Some((a.ints("starts"), a.ints("ends"), a.ints("axes"))) } else { None },
        },
        "QuantizeLinear" | "DequantizeLinear" => {
            let block = a.get("block_size").and_then(|x| x.i).unwrap_or(0);
            if block != 0 {
                if n.op_type() == "QuantizeLinear" {
                    return Err(unsupported("blocked QuantizeLinear is not supported"));
                }
                let block = usize::try_from(block)
                    .map_err(|_| Error::Invalid(format!("block_size {block} must be positive")))?;
                return Ok(Op::DequantizeBlocked { axis: a.int("axis", 1), block });
            }
            let axis = a.int("axis", 1);
            if n.op_type() == "QuantizeLinear" {
                Op::QuantizeLinear { axis }
            } else {
                Op::DequantizeLinear { axis }
            }
        }
        "Transpose" => {
            Op::Transpose { perm: a.get("perm").map(|x| x.ints.iter().map(|&v| v.max(0) as usize).collect()) }
        }
        "PRelu" => Op::PRelu,
        "Pow" => Op::Pow,
        "Where" => Op::Where,
        "Range" => Op::Range,
        "Expand" => Op::Expand,
        "Tile" => Op::Tile,
        "Dropout" => {
            // Inference: the identity. A training_mode input that is not a constant false, or a
            // mask output someone reads, is refused.
            if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err(unsupported("the mask output of Dropout is not supported"));
            }
            if a.int("is_test", 1) == 0 && opset < 7 {
                return Err(unsupported("Dropout in training mode is not supported"));
            }
            if n.input.get(2).is_some_and(|s| !s.is_empty()) {
                return Err(unsupported("Dropout with a training_mode input is not supported"));
            }
            Op::Identity
        }
        "ConvTranspose" => Op::ConvTranspose(lowbit_core::ConvTransposeAttrs {
            kernel_shape: a.usizes("kernel_shape")?,
            strides: a.usizes("strides")?,
            pads: pads_of(&a)?,
            dilations: a.usizes("dilations")?,
            group: usize::try_from(a.int("group", 1))
                .ok()
                .filter(|&g| g >= 1)
                .ok_or_else(|| Error::Invalid("group must be >= 1".into()))?,
            auto_pad: a.auto_pad()?,
            output_padding: a.usizes("output_padding")?,
            output_shape: a.usizes("output_shape")?,
        }),
        "Resize" | "Upsample" => Op::Resize(resize_attrs(&a, n.op_type() == "Upsample", opset)?),
        "Pad" => {
            let mode = match a.string("mode").as_deref().unwrap_or("constant") {
                "constant" => lowbit_core::PadMode::Constant,
                "reflect" => lowbit_core::PadMode::Reflect,
                "edge" => lowbit_core::PadMode::Edge,
                "wrap" => lowbit_core::PadMode::Wrap,
                m => return Err(Error::Invalid(format!("unknown Pad mode '{m}'"))),
            };
            let pads = if opset < 11 { Some(a.ints(if opset < 2 { "paddings" } else { "pads" })) } else { None };
            Op::Pad { mode, pads, value: a.float("value", 0.0) }
        }
        "ConstantOfShape" => {
            let value = match a.get("value").and_then(|x| x.t.as_ref()) {
                Some(t) => {
                    let v = tensor_from_proto(t).map_err(|e| Error::Invalid(e.to_string()))?;
                    if v.len() != 1 {
                        return Err(Error::Invalid(format!("ConstantOfShape value has {} elements, not 1", v.len())));
                    }
                    v.reshaped(vec![]).map_err(|e| Error::Invalid(e.to_string()))?
                }
                None => Tensor::scalar_f32(0.0),
            };
            Op::ConstantOfShape { value }
        }
        "DepthToSpace" | "SpaceToDepth" => {
            let block = usize::try_from(a.int("blocksize", 0))
                .ok()
                .filter(|&b| b >= 1)
                .ok_or_else(|| Error::Invalid("blocksize must be >= 1".into()))?;
            let to_space = n.op_type() == "DepthToSpace";
            let dcr = match a.string("mode").as_deref().unwrap_or("DCR") {
                "DCR" => true,
                "CRD" if to_space => false,
                m => return Err(Error::Invalid(format!("unknown mode '{m}'"))),
            };
            Op::DepthSpace { to_space, block, dcr }
        }
        "InstanceNormalization" => Op::InstanceNorm { epsilon: a.float("epsilon", 1e-5) },
        "LpNormalization" => {
            let p = match a.int("p", 2) {
                1 => 1,
                2 => 2,
                p => return Err(Error::Invalid(format!("LpNormalization p={p} (1 or 2 are defined)"))),
            };
            Op::LpNorm { axis: a.int("axis", -1), p }
        }
        other if by_name(&Reduce::ALL, other).is_some() => {
            let kind = by_name(&Reduce::ALL, other).unwrap_or(Reduce::Sum);
            // Axes moved from attribute to input 1 at opset 13 (ReduceSum) and 18 (the others).
            let axes_as_input = if kind == Reduce::Sum { opset >= 13 } else { opset >= 18 };
            Op::Reduce {
                kind,
                axes: if axes_as_input { None } else { Some(a.ints("axes")) },
                keepdims: a.int("keepdims", 1) != 0,
                noop_with_empty_axes: a.int("noop_with_empty_axes", 0) != 0,
            }
        }
        other if by_name(&Unary::ALL, other).is_some() => {
            let u = by_name(&Unary::ALL, other).unwrap_or(Unary::Neg);
            Op::Unary(match u {
                Unary::LeakyRelu { alpha } => Unary::LeakyRelu { alpha: a.float("alpha", alpha) },
                Unary::Elu { alpha } => Unary::Elu { alpha: a.float("alpha", alpha) },
                Unary::Selu { alpha, gamma } => {
                    Unary::Selu { alpha: a.float("alpha", alpha), gamma: a.float("gamma", gamma) }
                }
                u => u,
            })
        }
        other if by_name(&Variadic::ALL, other).is_some() => {
            Op::Variadic(by_name(&Variadic::ALL, other).unwrap_or(Variadic::Sum))
        }
        other if by_name(&Compare::ALL, other).is_some() => {
            Op::Compare(by_name(&Compare::ALL, other).unwrap_or(Compare::Equal))
        }
        other => {
            return Err(Error::Unsupported { node: name.into(), op: other.into(), reason: NOT_IMPLEMENTED.into() })
        }
    };
    Ok(op)
}

fn resize_attrs(a: &Attrs, upsample: bool, opset: i64) -> lowbit_core::Result<lowbit_core::ResizeAttrs> {
    use lowbit_core::{CoordMode, NearestMode, ResizeMode};
    let mode = match a.string("mode").as_deref().unwrap_or("nearest") {
        "nearest" => ResizeMode::Nearest,
        "linear" | "bilinear" => ResizeMode::Linear,
        m => return Err(Error::Invalid(format!("Resize mode '{m}' is not supported (nearest, linear)"))),
    };
    let coord = if upsample || opset < 11 {
        CoordMode::Asymmetric
    } else {
        match a.string("coordinate_transformation_mode").as_deref().unwrap_or("half_pixel") {
            "half_pixel" => CoordMode::HalfPixel,
            "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
            "align_corners" => CoordMode::AlignCorners,
            "asymmetric" => CoordMode::Asymmetric,
            "tf_half_pixel_for_nn" => CoordMode::TfHalfPixelForNn,
            "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
            "tf_crop_and_resize" => CoordMode::TfCropAndResize,
            m => return Err(Error::Invalid(format!("coordinate_transformation_mode '{m}' is not supported"))),
        }
    };
    let nearest = if upsample || opset < 11 {
        NearestMode::Floor
    } else {
        match a.string("nearest_mode").as_deref().unwrap_or("round_prefer_floor") {
            "round_prefer_floor" => NearestMode::RoundPreferFloor,
            "round_prefer_ceil" => NearestMode::RoundPreferCeil,
            "floor" => NearestMode::Floor,
            "ceil" => NearestMode::Ceil,
            m => return Err(Error::Invalid(format!("nearest_mode '{m}' is not supported"))),
        }
    };
    if a.int("antialias", 0) != 0 {
        return Err(Error::Invalid("Resize with antialias is not supported".into()));
    }
    match a.string("keep_aspect_ratio_policy").as_deref() {
        None | Some("stretch") => {}
        Some(p) => return Err(Error::Invalid(format!("keep_aspect_ratio_policy '{p}' is not supported"))),
    }
    let scales_attr = a.get("scales").map(|x| x.floats.clone()).filter(|_| upsample);
    if upsample && scales_attr.is_none() && opset < 9 {
        return Err(Error::Invalid("Upsample needs scales".into()));
    }
    Ok(lowbit_core::ResizeAttrs {
        mode,
        coord,
        nearest,
        scales_attr,
        upsample,
        opset10: !upsample && opset < 11,
        axes: a.get("axes").map(|x| x.ints.clone()),
        exclude_outside: a.int("exclude_outside", 0) != 0,
        extrapolation_value: a.float("extrapolation_value", 0.0),
        cubic_coeff_a: a.float("cubic_coeff_a", -0.75),
    })
}
