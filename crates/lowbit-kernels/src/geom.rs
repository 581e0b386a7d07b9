//! Geometry of windows over images: 2-D convolutions and pooling on NCHW planes ([`ConvGeom`],
//! [`PoolGeom`]) and depthwise convolutions on padded NHWC bytes ([`DwGeom`]). Plain data shared by
//! every kernel family; the choices that depend on a kernel path live with the kernels.

/// Shape and window of one 2-D convolution (one image).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvGeom {
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
    pub group: usize,
}

impl ConvGeom {
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pt == 0
            && self.pl == 0
            && self.oh == self.h
            && self.ow == self.w
            && self.group == 1
    }
    pub fn is_depthwise(&self) -> bool {
        self.group == self.c_in && self.group == self.c_out && self.group > 1
    }
    /// Rows of the im2col matrix (reduction length) per group.
    pub fn k(&self) -> usize {
        self.c_in / self.group * self.kh * self.kw
    }
    /// Multiply-accumulates per image.
    pub fn macs(&self) -> usize {
        self.c_out * self.oh * self.ow * self.k()
    }
}

/// Window geometry for pooling reuses [`ConvGeom`] (`c_in == c_out`, `group` unused).
pub type PoolGeom = ConvGeom;

/// Depthwise geometry on a zero-point-padded NHWC input `[hp][wp][c]`.
#[derive(Clone, Copy, Debug)]
pub struct DwGeom {
    pub c: usize,
    /// Channel stride of the padded input (`c`; the AVX-512 kernels read whole 64-channel blocks past it).
    pub cs: usize,
    pub wp: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Output positions `ox` whose input column `ox*s + off - pad` lies inside `[0, len)`.
#[inline(always)]
pub(crate) fn valid_range(out_len: usize, stride: usize, off: usize, pad: usize, len: usize) -> (usize, usize) {
    // need ox*s + off >= pad  and  ox*s + off - pad < len
    let lo = if off >= pad { 0 } else { (pad - off).div_ceil(stride) };
    let hi = if len + pad > off { ((len + pad - off - 1) / stride + 1).min(out_len) } else { 0 };
    (lo.min(hi), hi)
}
