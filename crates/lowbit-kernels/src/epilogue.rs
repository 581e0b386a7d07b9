//! The requantizing epilogue shared by the integer and binary kernels: per-channel scale and bias,
//! the fused activation clamp, and the output as f32 or quantized bytes ([`Requant`], [`Out`]).
//!
//! The arithmetic contract (the same one lowbit's fake-quant executor uses):
//! `y = f32(acc + bias_i[c]) · scale[c] + bias_f[c]`; `y = min(max(y, lo), hi)` (the fused
//! ReLU/Clip); and for a quantized output
//! `q = round_half_even(clamp(y / s_out, qmin - z_out, qmax - z_out)) + z_out`.

/// Where the epilogue writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Out {
    /// f32 values.
    F32,
    /// Quantized bytes (uint8 when `qmin == 0`, int8 bit patterns when `qmin == -128`).
    Q { scale: f32, zp: i32, qmin: i32, qmax: i32 },
}

/// Per-output-channel epilogue parameters (vectors padded with zeros to a multiple of 16).
#[derive(Clone, Debug)]
pub struct Requant {
    pub scale: Vec<f32>,
    pub bias_i: Vec<i32>,
    pub bias_f: Vec<f32>,
    pub lo: f32,
    pub hi: f32,
    pub out: Out,
    /// For quantized outputs, what the SIMD epilogues use: the activation clamp narrowed to the
    /// values that do not saturate (`y/s` within one step of the output range, so the result
    /// is unchanged and `y · (1/s)` cannot overflow), and `1/s` for the correctly rounded
    /// division `y/s = q + (y - q·s)·(1/s)`, `q = y·(1/s)` (Markstein's theorem: one FMA
    /// correction of a faithful quotient gives the correctly rounded one).
    pub ylo: f32,
    pub yhi: f32,
    pub inv: f32,
    /// Set by [`Requant::allow_unclamped`]: no activation clamp and `|y/s|` provably far from
    /// overflow, so the SIMD epilogues skip clamping `y` (the saturating narrow does the rest).
    pub unclamped: bool,
}

/// `y / s` rounded correctly, from `inv = 1/s` rounded: the quotient `q = y·inv`, the exact
/// residual `r = y - q·s` (one FMA), and the corrected `q + r·inv` (another FMA). Matches the
/// IEEE division bit for bit for normal operands (checked by the property tests).
#[inline(always)]
pub fn div_markstein(y: f32, s: f32, inv: f32) -> f32 {
    let q = y * inv;
    let r = (-q).mul_add(s, y);
    r.mul_add(inv, q)
}

impl Requant {
    /// `scale`, `bias_i`, `bias_f` per channel (unpadded); activation clamp `lo..hi`.
    pub fn new(scale: &[f32], bias_i: &[i32], bias_f: &[f32], lo: f32, hi: f32, out: Out) -> Requant {
        let n = scale.len();
        let np = n.div_ceil(16) * 16;
        let pad = |v: &[f32]| {
            let mut o = v.to_vec();
            o.resize(np, 0.0);
            o
        };
        let mut bi = bias_i.to_vec();
        bi.resize(np, 0);
        // An all-zero f32 bias is not stored (and not added: for quantized outputs `y + 0` only
        // differs from `y` in the sign of zero, which rounding erases).
        let bias_f = if bias_f.iter().all(|&v| v == 0.0) { vec![] } else { pad(bias_f) };
        let (ylo, yhi, inv) = match out {
            Out::Q { scale, zp, qmin, qmax } => {
                (lo.max((qmin - zp - 1) as f32 * scale), hi.min((qmax - zp + 1) as f32 * scale), 1.0 / scale)
            }
            Out::F32 => (lo, hi, 1.0),
        };
        Requant { scale: pad(scale), bias_i: bi, bias_f, lo, hi, out, ylo, yhi, inv, unclamped: false }
    }

    /// Lets the SIMD epilogues skip the `y` clamp when the activation clamp is implied by the
    /// output's saturation and every accumulator (at most `max_acc` in magnitude before the
    /// integer bias) keeps `|y/s_out|` below 2^30: then `y/s_out` cannot overflow the conversion,
    /// and saturating after rounding equals the scalar path's clamping.
    ///
    /// The clamp is implied where its bounds quantize to the ends of the output range (no bound,
    /// ReLU into a zero point of 0, ReLU6 into a range reaching 6): `y < lo` gives `y/s <= lo/s`
    /// (correctly rounded division is monotone), which rounds to at most `round(lo/s)`, and that
    /// already saturates to `qmin`, as the clamped value does; likewise above `hi`.
    pub fn allow_unclamped(&mut self, max_acc: f64) {
        let Out::Q { scale: so, zp, qmin, qmax } = self.out else { return };
        let at_end = |v: f32, end: i32| v.is_infinite() || quantize_one(v, so, zp, qmin, qmax) == end;
        if !(at_end(self.lo, qmin) && at_end(self.hi, qmax)) {
            return;
        }
        let ok = (0..self.scale.len()).all(|c| {
            let bf = self.bias_f.get(c).copied().unwrap_or(0.0) as f64;
            let y = (max_acc + (self.bias_i[c] as f64).abs()) * (self.scale[c] as f64).abs() * 1.001 + bf.abs();
            let t = y / so as f64;
            t.is_finite() && t < (1u64 << 30) as f64
        });
        self.unclamped = ok;
    }

    /// Channels `c0..c0+n` of this epilogue.
    pub fn slice(&self, c0: usize, n: usize) -> Requant {
        let bf = if self.bias_f.is_empty() { vec![0.0; n] } else { self.bias_f[c0..c0 + n].to_vec() };
        Requant::new(&self.scale[c0..c0 + n], &self.bias_i[c0..c0 + n], &bf, self.lo, self.hi, self.out)
    }

    /// Bytes of per-channel parameters held.
    pub fn bytes(&self) -> usize {
        (self.scale.len() + self.bias_i.len() + self.bias_f.len()) * 4
    }

    /// Adds `d[c]` to the integer bias (zero-point corrections).
    pub fn add_bias_i(&mut self, d: &[i32]) {
        for (b, &v) in self.bias_i.iter_mut().zip(d) {
            *b = b.wrapping_add(v);
        }
    }
}

/// The epilogue's f32 value for one accumulator (before output quantization).
#[inline(always)]
pub fn epilogue_f32(acc: i32, c: usize, rq: &Requant) -> f32 {
    let mut y = (acc.wrapping_add(rq.bias_i[c]) as f32) * rq.scale[c];
    if !rq.bias_f.is_empty() {
        y += rq.bias_f[c];
    }
    y.max(rq.lo).min(rq.hi)
}

/// QuantizeLinear of one value: `round_half_even(y / scale) + zp`, saturated to `qmin..=qmax`.
#[inline(always)]
pub fn quantize_one(y: f32, scale: f32, zp: i32, qmin: i32, qmax: i32) -> i32 {
    let t = (y / scale).max((qmin - zp) as f32).min((qmax - zp) as f32);
    // SAFETY: `max` returns the bound for NaN, so `t` is finite and within i32 range.
    unsafe { t.round_ties_even().to_int_unchecked::<i32>() + zp }
}

/// Splits a bias given as int32 values with their own scale into the integer part (when its
/// scale equals the accumulator scale bit for bit, as quantize_static and lowbit write it) and the
/// f32 part (otherwise). Returns `(bias_i, bias_f)`.
pub fn split_bias(bias: Option<(&[i32], &[f32])>, acc_scale: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let n = acc_scale.len();
    let mut bi = vec![0i32; n];
    let mut bf = vec![0f32; n];
    if let Some((q, s)) = bias {
        for c in 0..n {
            let sc = if s.len() == 1 { s[0] } else { s[c] };
            if sc.to_bits() == acc_scale[c].to_bits() {
                bi[c] = q[c];
            } else {
                bf[c] = q[c] as f32 * sc;
            }
        }
    }
    (bi, bf)
}

/// An output pointer for the epilogue (bytes or f32 depending on [`Out`]).
#[derive(Clone, Copy)]
pub struct OutPtr(pub *mut u8);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// Element `(i, j)` with row stride `ldc` elements.
    ///
    /// # Safety
    /// The element must lie inside the buffer this pointer addresses.
    #[inline(always)]
    pub unsafe fn at(self, out: Out, i: usize, j: usize, ldc: usize) -> *mut u8 {
        match out {
            Out::F32 => (self.0 as *mut f32).add(i * ldc + j) as *mut u8,
            Out::Q { .. } => self.0.add(i * ldc + j),
        }
    }
}
