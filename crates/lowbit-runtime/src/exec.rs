//! Running a compiled plan: the per-run state ([`State`]: the activation arena and the kernels'
//! scratch), the step interpreter, and the thread pool's spinning helpers.

use lowbit_core::{DType, Data, Error, Result, Tensor};
use lowbit_kernels::int8::ops as qops;
use lowbit_kernels::int8::{self, edges, OutPtr};
use lowbit_kernels::isa::Paths;
use lowbit_kernels::{eltwise, fp32, pool, reference, resample};

use crate::step::{Kind, Operand, Step, StepInfo};

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// What one run of a plan writes: the activation arena (every intermediate value, placed by
/// liveness) and the kernels' scratch. A plan is immutable; each concurrent run owns a `State`.
pub struct State {
    arena: Vec<Line>,
    scratch: Vec<f32>,
    /// Byte scratch of the integer kernels (im2col rows, padded inputs).
    qscratch: Vec<u8>,
    /// Word scratch of the binary kernels (packed input, bit im2col).
    bscratch: Vec<u64>,
}

/// Sizes of a [`State`]'s parts.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StateSizes {
    pub arena_bytes: usize,
    pub scratch: usize,
    pub qscratch: usize,
    pub bscratch: usize,
}

impl State {
    pub(crate) fn new(s: &StateSizes) -> State {
        State {
            arena: vec![Line([0; 64]); s.arena_bytes.div_ceil(64)],
            scratch: vec![0.0; s.scratch],
            qscratch: vec![0; s.qscratch],
            bscratch: vec![0; s.bscratch],
        }
    }

    /// Copies the model inputs into their buffers.
    pub(crate) fn write_inputs(&mut self, inputs: &[(usize, &Tensor)]) {
        let base = self.arena.as_mut_ptr() as *mut u8;
        for &(off, t) in inputs {
            // SAFETY: the input buffer at `off` has room for the whole tensor (planned from its
            // shape, checked by the caller).
            unsafe { write_data(base.add(off), &t.data) };
        }
    }

    /// Runs `steps` in order; `after(i, base)` is called after step `i` (profiling, observers).
    pub(crate) fn exec(
        &mut self,
        steps: &[Step],
        paths: Paths,
        threads: usize,
        infos: &[StepInfo],
        after: &mut dyn FnMut(usize, *const u8),
    ) -> Result<()> {
        let base = self.arena.as_mut_ptr() as *mut u8;
        for (i, s) in steps.iter().enumerate() {
            // SAFETY: the planner gives every live buffer disjoint bytes inside the arena, and the
            // scratch buffers were sized for every step.
            unsafe { exec_step(s, paths, base, &mut self.scratch, &mut self.qscratch, &mut self.bscratch, threads) }
                .map_err(|e| e.in_node(&infos[i].name))?;
            after(i, base);
        }
        Ok(())
    }

    /// The value of `o` after a run.
    pub(crate) fn read(&self, o: &Operand) -> Tensor {
        // SAFETY: every buffer operand lies inside the arena.
        unsafe { read_operand(self.arena.as_ptr() as *const u8, o) }
    }
}

/// Runs `f` on the current pool thread while every other thread of the pool busy-waits for work
/// (`rayon::yield_now`) instead of going to sleep between parallel steps. A plan run is a chain of
/// short parallel regions (hundreds per MobileNet inference); waking a sleeping worker for each of
/// them costs more than the regions' own imbalance. `LOWBIT_SPIN=0` turns it off.
pub(crate) fn with_spinning_helpers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 || *OFF.get_or_init(|| std::env::var("LOWBIT_SPIN").is_ok_and(|v| v == "0")) {
        return f();
    }
    let done = AtomicBool::new(false);
    let me = rayon::current_thread_index();
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| {
                // A helper job picked up by the running thread itself (while it waits inside a
                // parallel step) must not spin there: it would never get back to its own work.
                if rayon::current_thread_index() == me {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // Set `done` on the way out even when `f` panics: otherwise the helpers would spin
        // forever and the scope (which waits for them before passing the panic on) would hang.
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _release = Release(&done);
        f()
    })
}

/// # Safety
/// `dst` has room for every element of `d`.
unsafe fn write_data(dst: *mut u8, d: &Data) {
    let (src, bytes) = match d {
        Data::F32(v) => (v.as_ptr() as *const u8, v.len() * 4),
        Data::I64(v) => (v.as_ptr() as *const u8, v.len() * 8),
        Data::I32(v) => (v.as_ptr() as *const u8, v.len() * 4),
        Data::I8(v) => (v.as_ptr() as *const u8, v.len()),
        Data::U8(v) => (v.as_ptr(), v.len()),
        Data::Bool(v) => (v.as_ptr() as *const u8, v.len()),
    };
    std::ptr::copy_nonoverlapping(src, dst, bytes);
}

/// # Safety
/// A buffer operand lies inside the arena at `base`.
unsafe fn read_operand(base: *const u8, o: &Operand) -> Tensor {
    match o {
        Operand::Const(t) => (**t).clone(),
        Operand::Buf { off, dtype, shape, nhwc } => {
            let n: usize = shape.iter().product();
            let mut p = base.add(*off);
            let mut tmp = vec![];
            if *nhwc {
                tmp = vec![0u8; n];
                edges::nhwc_to_nchw(
                    std::slice::from_raw_parts(p, n),
                    shape[0],
                    shape[1],
                    shape[2] * shape[3],
                    &mut tmp,
                );
                p = tmp.as_mut_ptr();
            }
            let data = match dtype {
                DType::F32 => Data::F32(std::slice::from_raw_parts(p as *const f32, n).to_vec()),
                DType::I64 => Data::I64(std::slice::from_raw_parts(p as *const i64, n).to_vec()),
                DType::I32 => Data::I32(std::slice::from_raw_parts(p as *const i32, n).to_vec()),
                DType::I8 => Data::I8(std::slice::from_raw_parts(p as *const i8, n).to_vec()),
                DType::U8 => Data::U8(std::slice::from_raw_parts(p, n).to_vec()),
                DType::Bool => Data::Bool(std::slice::from_raw_parts(p, n).iter().map(|&b| b != 0).collect()),
            };
            drop(tmp);
            Tensor { shape: shape.clone(), data }
        }
    }
}

unsafe fn f32_in<'a>(base: *mut u8, o: &'a Operand) -> &'a [f32] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts(base.add(*off) as *const f32, o.len()),
        Operand::Const(t) => t.as_f32().expect("planned as f32"),
    }
}

unsafe fn bytes_in<'a>(base: *mut u8, o: &'a Operand) -> &'a [u8] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts(base.add(*off), o.len()),
        Operand::Const(t) => match &t.data {
            Data::U8(v) => v,
            Data::I8(v) => std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()),
            _ => unreachable!("planned as bytes"),
        },
    }
}

unsafe fn bytes_out<'a>(base: *mut u8, o: &Operand) -> &'a mut [u8] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts_mut(base.add(*off), o.len()),
        Operand::Const(_) => unreachable!("outputs are buffers"),
    }
}

unsafe fn f32_out<'a>(base: *mut u8, o: &Operand) -> &'a mut [f32] {
    match o {
        Operand::Buf { off, .. } => std::slice::from_raw_parts_mut(base.add(*off) as *mut f32, o.len()),
        Operand::Const(_) => unreachable!("outputs are buffers"),
    }
}

/// Runs one step.
///
/// # Safety
/// `base` is the arena of a [`State`] made for the plan `s` belongs to (every buffer operand lies
/// inside it, live buffers disjoint); the scratch slices are at least the plan's sizes.
unsafe fn exec_step(
    s: &Step,
    paths: Paths,
    base: *mut u8,
    scratch: &mut [f32],
    qscratch: &mut [u8],
    bscratch: &mut [u64],
    threads: usize,
) -> Result<()> {
    let x = || f32_in(base, s.ins[0].as_ref().unwrap());
    match &s.kind {
        Kind::Conv { p, batch } => {
            let xs = x();
            let out = f32_out(base, &s.out);
            let (isz, osz) = (p.geom.c_in * p.geom.h * p.geom.w, p.geom.c_out * p.geom.oh * p.geom.ow);
            for b in 0..*batch {
                fp32::conv::conv2d(p, &xs[b * isz..(b + 1) * isz], &mut out[b * osz..(b + 1) * osz], scratch, threads);
            }
        }
        Kind::ConvQuant { p, q, batch } => {
            let xs = x();
            let out = bytes_out(base, &s.out);
            let (isz, osz) = (p.geom.c_in * p.geom.h * p.geom.w, p.geom.c_out * p.geom.oh * p.geom.ow);
            for b in 0..*batch {
                let (xb, ob) = (&xs[b * isz..(b + 1) * isz], &mut out[b * osz..(b + 1) * osz]);
                let done = edges::conv_quantize(paths.int8, p, xb, *q, ob, scratch, threads);
                assert!(done, "fused conv + quantize planned for a convolution that is not one shifted-rows group");
            }
        }
        Kind::Deconv { p, batch } => {
            let xs = x();
            let out = f32_out(base, &s.out);
            let g = &p.geom;
            let (isz, osz) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
            for b in 0..*batch {
                p.run(&xs[b * isz..(b + 1) * isz], &mut out[b * osz..(b + 1) * osz], scratch, threads);
            }
        }
        Kind::Gemm { m, n, k, b, prefill, trans_a, act } => {
            let a = x();
            let out = f32_out(base, &s.out);
            if let Some(p) = prefill {
                out.copy_from_slice(p);
            }
            if *m == 1 {
                // `b` is in pack_gemv's panel layout; a batch-1 prefill is one row of n.
                fp32::gemm::gemv_bias_act(paths.f32, a, b, *k, *n, prefill.as_deref(), *act, out, threads);
                return Ok(());
            }
            let (lrs, lcs) = if *trans_a { (1, *m as isize) } else { (*k as isize, 1) };
            fp32::gemm::sgemm(
                paths.f32,
                *m,
                *n,
                *k,
                out.as_mut_ptr(),
                *n as isize,
                a.as_ptr(),
                lrs,
                lcs,
                b.as_ptr(),
                *n as isize,
                1,
                prefill.is_some(),
                threads,
            );
            eltwise::apply_act(paths.f32, *act, out);
        }
        Kind::Act(a) => {
            let out = f32_out(base, &s.out);
            out.copy_from_slice(x());
            eltwise::apply_act_par(paths.f32, *a, out, threads);
        }
        Kind::Sigmoid => eltwise::sigmoid(paths.f32, x(), f32_out(base, &s.out), threads),
        Kind::PRelu { slope, plane } => {
            let out = f32_out(base, &s.out);
            let c = slope.len();
            for (i, (o, xs)) in out.chunks_mut((*plane).max(1)).zip(x().chunks((*plane).max(1))).enumerate() {
                let a = slope[i % c];
                for (y, &v) in o.iter_mut().zip(xs) {
                    *y = if v >= 0.0 { v } else { v * a };
                }
            }
        }
        Kind::Binary { op, bc } => {
            let b = f32_in(base, s.ins[1].as_ref().unwrap());
            eltwise::binary_par(paths.f32, *op, bc, x(), b, f32_out(base, &s.out), threads);
        }
        Kind::Pool { g, planes, max, cip, pb, pr } => {
            pool::pool2d(paths.f32, g, *planes, *max, *cip, *pb, *pr, x(), f32_out(base, &s.out), threads);
        }
        Kind::GlobalPool { plane, max } => pool::global_pool(x(), *plane, *max, f32_out(base, &s.out)),
        Kind::Concat { outer, inners } => {
            let parts: Vec<&[f32]> = s.ins.iter().map(|o| f32_in(base, o.as_ref().unwrap())).collect();
            resample::concat_f32(&parts, *outer, inners, f32_out(base, &s.out));
        }
        Kind::Resize2d { planes, hw, ohw, rows, cols } => {
            let out = f32_out(base, &s.out);
            resample::resize2d_f32(*planes, *hw, *ohw, rows.as_ref(), cols.as_ref(), x(), out, scratch);
        }
        Kind::Quantize { q, layout } => {
            let xs = x();
            edges::quantize(paths.int8, xs, *q, *layout, bytes_out(base, &s.out), qscratch, threads);
        }
        Kind::Dequantize { q, layout } => {
            let out = f32_out(base, &s.out);
            let src = bytes_in(base, s.ins[0].as_ref().unwrap());
            edges::dequantize(paths.int8, src, *q, *layout, out, threads);
        }
        Kind::QConv { c, batch } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            let g = &c.geom;
            let (isz, osz) = (g.h * g.w * g.c_in, g.oh * g.ow * g.c_out);
            let esz = if c.out() == int8::Out::F32 { 4 } else { 1 };
            let Operand::Buf { off, .. } = &s.out else { unreachable!("outputs are buffers") };
            for b in 0..*batch {
                c.run(&xs[b * isz..(b + 1) * isz], OutPtr(base.add(off + b * osz * esz)), qscratch, threads);
            }
        }
        Kind::QExpandDw { f, batch } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            let (e, g) = (&f.expand.geom, &f.dw.geom);
            let (isz, osz) = (e.h * e.w * e.c_in, g.oh * g.ow * g.c_out);
            let esz = if f.out() == int8::Out::F32 { 4 } else { 1 };
            let Operand::Buf { off, .. } = &s.out else { unreachable!("outputs are buffers") };
            for b in 0..*batch {
                f.run(&xs[b * isz..(b + 1) * isz], OutPtr(base.add(off + b * osz * esz)), threads);
            }
        }
        Kind::BinConv { c, batch, zx } => {
            let g = &c.geom;
            let osz = g.oh * g.ow * g.c_out;
            let esz = if c.out() == int8::Out::F32 { 4 } else { 1 };
            let Operand::Buf { off, .. } = &s.out else { unreachable!("outputs are buffers") };
            let pixels = g.h * g.w;
            for b in 0..*batch {
                let o = OutPtr(base.add(off + b * osz * esz));
                match zx {
                    Some(z) => {
                        let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
                        c.run_u8(&xs[b * pixels * g.c_in..(b + 1) * pixels * g.c_in], *z, o, bscratch, threads);
                    }
                    None => {
                        let xs = f32_in(base, s.ins[0].as_ref().unwrap());
                        c.run_f32_nchw(&xs[b * pixels * g.c_in..(b + 1) * pixels * g.c_in], o, bscratch, threads);
                    }
                }
            }
        }
        Kind::QGemm { b, rq, m, k } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            let Operand::Buf { off, .. } = &s.out else { unreachable!("outputs are buffers") };
            let (a, lda) = if k % 4 == 0 {
                (xs, *k)
            } else {
                let a = &mut qscratch[..m * b.k4];
                for i in 0..*m {
                    a[i * b.k4..i * b.k4 + k].copy_from_slice(&xs[i * k..(i + 1) * k]);
                    a[i * b.k4 + k..(i + 1) * b.k4].fill(0);
                }
                (&*a, b.k4)
            };
            int8::gemm(*m, a.as_ptr(), lda, b, rq, OutPtr(base.add(*off)), b.n, threads);
        }
        Kind::QAdd(p) => {
            let a = bytes_in(base, s.ins[0].as_ref().unwrap());
            let b = bytes_in(base, s.ins[1].as_ref().unwrap());
            let o = bytes_out(base, &s.out);
            if threads > 1 && o.len() >= 1 << 15 {
                use rayon::prelude::*;
                let chunk = o.len().div_ceil(threads * 4);
                o.par_chunks_mut(chunk).enumerate().for_each(|(i, oc)| {
                    let r = i * chunk..i * chunk + oc.len();
                    qops::add(paths.int8, &a[r.clone()], &b[r], p, oc);
                });
            } else {
                qops::add(paths.int8, a, b, p, o);
            }
        }
        Kind::QLut(table) => {
            let x = bytes_in(base, s.ins[0].as_ref().unwrap());
            qops::lut(paths.int8, x, table, bytes_out(base, &s.out));
        }
        Kind::QMul { p, gate } => {
            let a = bytes_in(base, s.ins[0].as_ref().unwrap());
            let b = bytes_in(base, s.ins[1].as_ref().unwrap());
            let o = bytes_out(base, &s.out);
            match *gate {
                None => qops::mul(paths.int8, a, b, p, o),
                Some((n, plane, c)) => qops::mul_channels(paths.int8, a, b, n, plane, c, p, o),
            }
        }
        Kind::QGap { n, plane, c, qi, qo } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            qops::global_avg(xs, *n, *plane, *c, *qi, *qo, bytes_out(base, &s.out));
        }
        Kind::QMaxPool { g, n, signed } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            lowbit_kernels::int8::maxpool::max_pool(paths.int8, g, *n, *signed, xs, bytes_out(base, &s.out), threads);
        }
        Kind::QDeconv { d, batch } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            let g = &d.geom;
            let (isz, osz) = (g.h * g.w * g.c_in, g.oh * g.ow * g.c_out);
            let Operand::Buf { off, .. } = &s.out else { unreachable!("outputs are buffers") };
            for b in 0..*batch {
                d.run(&xs[b * isz..(b + 1) * isz], OutPtr(base.add(off + b * osz)), threads);
            }
        }
        Kind::QLutChannels(tables) => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            lowbit_kernels::int8::moves::lut_channels(paths.int8, xs, tables, bytes_out(base, &s.out));
        }
        Kind::QPRelu { qi, qo, slope } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            lowbit_kernels::int8::moves::prelu_channels(
                paths.int8,
                xs,
                slope.len(),
                slope,
                *qi,
                *qo,
                bytes_out(base, &s.out),
            );
        }
        Kind::QConcat { outer, inners, tables } => {
            let parts: Vec<(&[u8], Option<&[u8; 256]>)> =
                s.ins.iter().zip(tables).map(|(o, t)| (bytes_in(base, o.as_ref().unwrap()), t.as_deref())).collect();
            lowbit_kernels::int8::moves::concat(paths.int8, &parts, *outer, inners, bytes_out(base, &s.out));
        }
        Kind::QResize { n, c, hw, ohw, rows, cols, qi, qo } => {
            let xs = bytes_in(base, s.ins[0].as_ref().unwrap());
            let out = bytes_out(base, &s.out);
            lowbit_kernels::int8::moves::resize_nhwc(
                paths.int8,
                *n,
                *hw,
                *ohw,
                *c,
                rows.as_ref(),
                cols.as_ref(),
                *qi,
                *qo,
                xs,
                out,
            );
        }
        Kind::Generic(node) => {
            let owned: Vec<Option<Tensor>> = s.ins.iter().map(|o| o.as_ref().map(|o| read_operand(base, o))).collect();
            let refs: Vec<Option<&Tensor>> = owned.iter().map(|o| o.as_ref()).collect();
            let outs = reference::eval(node, &refs)?;
            let t = &outs[0];
            if let Operand::Buf { off, dtype, shape, .. } = &s.out {
                if t.dtype() != *dtype || &t.shape != shape {
                    return Err(Error::Invalid(format!(
                        "produced {} {:?}, planned {} {:?}",
                        t.dtype().name(),
                        t.shape,
                        dtype.name(),
                        shape
                    )));
                }
                write_data(base.add(*off), &t.data);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_spinning_helpers;

    /// A panic inside a run with spinning helpers reaches the caller; it must not leave the
    /// helpers spinning (the scope would then wait for them forever). Run on its own thread so
    /// a regression fails by timeout instead of hanging the test binary.
    #[test]
    fn a_panic_under_spinning_helpers_returns() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| with_spinning_helpers(|| -> u32 { panic!("kernel failure") }))
            }));
            let ok = pool.install(|| with_spinning_helpers(|| 7u32));
            let _ = tx.send((r.is_err(), ok));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(got, Ok((true, 7)), "the panic did not come back (helpers still spinning?)");
    }
}
