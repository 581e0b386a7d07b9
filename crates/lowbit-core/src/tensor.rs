use crate::{Error, Result};

/// Element types lowbit stores. Float graphs compute in `F32`; integer types carry shapes,
/// indices and quantized values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
}

/// Typed, contiguous, row-major element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

macro_rules! data_map {
    ($data:expr, $v:ident => $e:expr) => {
        match $data {
            Data::F32($v) => $e,
            Data::I64($v) => $e,
            Data::I32($v) => $e,
            Data::I8($v) => $e,
            Data::U8($v) => $e,
            Data::Bool($v) => $e,
        }
    };
}

impl Data {
    pub fn len(&self) -> usize {
        data_map!(self, v => v.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I64(_) => DType::I64,
            Data::I32(_) => DType::I32,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::Bool(_) => DType::Bool,
        }
    }
    /// Zero-filled storage of `dtype` with `n` elements.
    pub fn zeros(dtype: DType, n: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::I64 => Data::I64(vec![0; n]),
            DType::I32 => Data::I32(vec![0; n]),
            DType::I8 => Data::I8(vec![0; n]),
            DType::U8 => Data::U8(vec![0; n]),
            DType::Bool => Data::Bool(vec![false; n]),
        }
    }
    /// Gathers elements at `idx` into new storage of the same type.
    pub fn gather(&self, idx: &[usize]) -> Data {
        match self {
            Data::F32(v) => Data::F32(idx.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(idx.iter().map(|&i| v[i]).collect()),
            Data::I32(v) => Data::I32(idx.iter().map(|&i| v[i]).collect()),
            Data::I8(v) => Data::I8(idx.iter().map(|&i| v[i]).collect()),
            Data::U8(v) => Data::U8(idx.iter().map(|&i| v[i]).collect()),
            Data::Bool(v) => Data::Bool(idx.iter().map(|&i| v[i]).collect()),
        }
    }
    /// Concatenates storages of the same type.
    pub fn concat(parts: &[&Data]) -> Result<Data> {
        let first = parts.first().ok_or_else(|| Error::Invalid("concat of nothing".into()))?;
        let mut out = Data::zeros(first.dtype(), 0);
        for p in parts {
            match (&mut out, p) {
                (Data::F32(o), Data::F32(v)) => o.extend_from_slice(v),
                (Data::I64(o), Data::I64(v)) => o.extend_from_slice(v),
                (Data::I32(o), Data::I32(v)) => o.extend_from_slice(v),
                (Data::I8(o), Data::I8(v)) => o.extend_from_slice(v),
                (Data::U8(o), Data::U8(v)) => o.extend_from_slice(v),
                (Data::Bool(o), Data::Bool(v)) => o.extend_from_slice(v),
                _ => return Err(Error::Invalid("concat of tensors with different element types".into())),
            }
        }
        Ok(out)
    }
    /// Element `i` as f64 (lossless for every stored type but large i64).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Data::F32(v) => v[i] as f64,
            Data::I64(v) => v[i] as f64,
            Data::I32(v) => v[i] as f64,
            Data::I8(v) => v[i] as f64,
            Data::U8(v) => v[i] as f64,
            Data::Bool(v) => v[i] as u8 as f64,
        }
    }
    /// Converts to `dtype` with ONNX Cast semantics (float to int truncates toward zero, saturating).
    pub fn cast(&self, dtype: DType) -> Data {
        if self.dtype() == dtype {
            return self.clone();
        }
        let n = self.len();
        match (self, dtype) {
            (Data::I64(v), DType::I32) => Data::I32(v.iter().map(|&x| x as i32).collect()),
            (Data::I32(v), DType::I64) => Data::I64(v.iter().map(|&x| x as i64).collect()),
            (_, DType::F32) => Data::F32((0..n).map(|i| self.get_f64(i) as f32).collect()),
            (_, DType::I64) => Data::I64((0..n).map(|i| self.get_f64(i) as i64).collect()),
            (_, DType::I32) => Data::I32((0..n).map(|i| self.get_f64(i) as i32).collect()),
            (_, DType::I8) => Data::I8((0..n).map(|i| self.get_f64(i) as i8).collect()),
            (_, DType::U8) => Data::U8((0..n).map(|i| self.get_f64(i) as u8).collect()),
            (_, DType::Bool) => Data::Bool((0..n).map(|i| self.get_f64(i) != 0.0).collect()),
        }
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// For each flat index of `out`, the flat index of the broadcast source element of shape `src`.
pub fn broadcast_index(src: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let mut sst = vec![0usize; r];
    let full = strides(src);
    for d in 0..src.len() {
        let od = r - src.len() + d;
        sst[od] = if src[d] == 1 { 0 } else { full[d] };
    }
    let ost = strides(out);
    let total: usize = out.iter().product();
    (0..total).map(|f| (0..r).map(|d| ((f / ost[d]) % out[d].max(1)) * sst[d]).sum()).collect()
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor> {
        if numel(&shape) != data.len() {
            return Err(Error::Invalid(format!(
                "tensor of shape {:?} needs {} elements, got {}",
                shape,
                numel(&shape),
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        assert_eq!(numel(&shape), v.len(), "Tensor::f32 shape/data mismatch");
        Tensor { shape, data: Data::F32(v) }
    }
    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        assert_eq!(numel(&shape), v.len(), "Tensor::i64 shape/data mismatch");
        Tensor { shape, data: Data::I64(v) }
    }
    pub fn scalar_f32(x: f32) -> Tensor {
        Tensor { shape: vec![], data: Data::F32(vec![x]) }
    }
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        Tensor { shape, data: Data::zeros(dtype, n) }
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
    /// The values as f32, converting integer types.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            d => (0..d.len()).map(|i| d.get_f64(i) as f32).collect(),
        }
    }
    /// The values as i64 (shape tensors, axes, indices); floats are truncated.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            Data::I64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| x as i64).collect(),
            d => (0..d.len()).map(|i| d.get_f64(i) as i64).collect(),
        }
    }
    pub fn reshaped(mut self, shape: Vec<usize>) -> Result<Tensor> {
        if numel(&shape) != self.len() {
            return Err(Error::Invalid(format!("cannot reshape {:?} to {:?}", self.shape, shape)));
        }
        self.shape = shape;
        Ok(self)
    }
    pub fn size_bytes(&self) -> usize {
        self.len() * self.dtype().size()
    }
}
