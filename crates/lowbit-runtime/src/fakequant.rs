//! The fake-quant executor: runs a QDQ graph node by node on the reference evaluator, with f32
//! values between nodes exactly as the graph says, except that a Conv or Gemm whose input and
//! weights are DequantizeLinear outputs (also a group-1 ConvTranspose), and a GlobalAveragePool whose input is one, are computed
//! from the integers behind them: the sum of integer products is exact (float summation would
//! round differently depending on order), then scaled once, `f32(acc + bias_q) · (s_x · s_w)`
//! (or `f32(acc) · (s_x · s_w) + bias` for a float bias). That is the value the float QDQ graph
//! means, rounded once, and it is the arithmetic contract of lowbit's integer kernels, so the
//! integer plan must reproduce this executor's int8 values exactly.
//!
//! It is slow (plain loops) and independent of the plan: no fusion, no packing, no NHWC.

use std::collections::HashMap;

use lowbit_core::{DType, Error, Graph, Node, Op, Result, Tensor};
use lowbit_kernels::int8::ops::{global_avg_value, QParams};
use lowbit_kernels::int8::split_bias;
use lowbit_kernels::reference;

/// Runs `graph` on `inputs` (its runtime inputs in order); returns every value by name.
pub fn run(graph: &Graph, inputs: &[Tensor]) -> Result<HashMap<String, Tensor>> {
    let mut vals: HashMap<String, Tensor> = graph.initializers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let rt = graph.runtime_inputs();
    if rt.len() != inputs.len() {
        return Err(Error::Invalid(format!("model has {} inputs, {} given", rt.len(), inputs.len())));
    }
    for (vi, t) in rt.iter().zip(inputs) {
        vals.insert(vi.name.clone(), t.clone());
    }
    let mut prod: HashMap<String, Node> = HashMap::new();
    for n in &graph.nodes {
        let exact = match &n.op {
            Op::Conv(_) | Op::Gemm { .. } | Op::MatMul | Op::ConvTranspose(_) => {
                exact_mac(n, &prod, &vals).map_err(|e| e.in_node(&n.name))?
            }
            Op::GlobalAveragePool => exact_gap(n, &prod, &vals),
            _ => None,
        };
        let outs = match exact {
            Some(t) => vec![t],
            None => {
                let ins: Vec<Option<&Tensor>> = n
                    .inputs
                    .iter()
                    .map(|s| {
                        if s.is_empty() {
                            Ok(None)
                        } else {
                            vals.get(s).map(Some).ok_or_else(|| Error::node(&n.name, format!("input '{s}' missing")))
                        }
                    })
                    .collect::<Result<_>>()?;
                reference::eval(n, &ins).map_err(|e| e.in_node(&n.name))?
            }
        };
        for (o, t) in n.outputs.iter().zip(outs) {
            if !o.is_empty() {
                vals.insert(o.clone(), t);
                prod.insert(o.clone(), n.clone());
            }
        }
    }
    Ok(vals)
}

/// The integers and per-channel scales behind a DequantizeLinear output.
struct Deq<'a> {
    q: &'a Tensor,
    scale: Vec<f32>,
    zp: Vec<i64>,
}

fn deq<'a>(name: Option<&str>, prod: &HashMap<String, Node>, vals: &'a HashMap<String, Tensor>) -> Option<Deq<'a>> {
    let d = prod.get(name?)?;
    if !matches!(d.op, Op::DequantizeLinear { .. }) {
        return None;
    }
    let q = vals.get(d.input(0)?)?;
    let scale = vals.get(d.input(1)?)?.to_f32_vec();
    let zp = d.input(2).and_then(|z| vals.get(z)).map(|z| z.to_i64_vec()).unwrap_or_else(|| vec![0; scale.len()]);
    Some(Deq { q, scale, zp })
}

fn exact_gap(n: &Node, prod: &HashMap<String, Node>, vals: &HashMap<String, Tensor>) -> Option<Tensor> {
    let x = deq(n.input(0), prod, vals)?;
    if x.scale.len() != 1 || x.q.rank() != 4 || !matches!(x.q.dtype(), DType::U8 | DType::I8) {
        return None;
    }
    let qp = QParams { scale: x.scale[0], zp: x.zp[0] as i32, signed: x.q.dtype() == DType::I8 };
    let (nb, c, plane) = (x.q.shape[0], x.q.shape[1], x.q.shape[2] * x.q.shape[3]);
    let v = x.q.to_i64_vec();
    let out = (0..nb * c)
        .map(|i| {
            let s: i64 = v[i * plane..(i + 1) * plane].iter().sum();
            global_avg_value(s as i32, plane, qp)
        })
        .collect();
    Some(Tensor::f32(vec![nb, c, 1, 1], out))
}

fn exact_mac(n: &Node, prod: &HashMap<String, Node>, vals: &HashMap<String, Tensor>) -> Result<Option<Tensor>> {
    let (Some(x), Some(w)) = (deq(n.input(0), prod, vals), deq(n.input(1), prod, vals)) else { return Ok(None) };
    if x.scale.len() != 1 || w.zp.iter().any(|&z| z != 0) || !matches!(x.q.dtype(), DType::U8 | DType::I8) {
        return Ok(None);
    }
    let xv: Vec<i32> = x.q.to_i64_vec().iter().map(|&v| (v - x.zp[0]) as i32).collect();
    let wv: Vec<i32> = w.q.to_i64_vec().iter().map(|&v| v as i32).collect();
    let bias_deq = deq(n.input(2), prod, vals).filter(|b| b.q.dtype() == DType::I32 && b.zp.iter().all(|&z| z == 0));
    let bias_f32 = n.input(2).and_then(|b| vals.get(b));
    let (ws, xs) = (&w.q.shape, &x.q.shape);
    let (nout, out_shape) = match &n.op {
        Op::Conv(c) => {
            if xs.len() != 4 || ws.len() != 4 {
                return Ok(None);
            }
            let win =
                lowbit_core::shape::window(&xs[2..], &ws[2..], &c.strides, &c.dilations, &c.pads, c.auto_pad, false)?;
            (ws[0], vec![xs[0], ws[0], win.out[0], win.out[1]])
        }
        Op::Gemm { alpha, beta, trans_a, trans_b, .. } => {
            if *alpha != 1.0 || *trans_a || (n.input(2).is_some() && *beta != 1.0) || xs.len() != 2 || ws.len() != 2 {
                return Ok(None);
            }
            (if *trans_b { ws[0] } else { ws[1] }, vec![xs[0], if *trans_b { ws[0] } else { ws[1] }])
        }
        // A 2-D MatMul by constant weights is a Gemm without transposes or bias.
        Op::MatMul => {
            if xs.len() != 2 || ws.len() != 2 || n.inputs.len() != 2 {
                return Ok(None);
            }
            (ws[1], vec![xs[0], ws[1]])
        }
        Op::ConvTranspose(c) => {
            // Per-channel weight scales must be on the output-channel axis (1) of `[C_in][C_out][kh][kw]`.
            let axis = match n.input(1).and_then(|v| prod.get(v)).map(|d| &d.op) {
                Some(Op::DequantizeLinear { axis }) => *axis,
                _ => return Ok(None),
            };
            if xs.len() != 4
                || ws.len() != 4
                || c.group.max(1) != 1
                || !lowbit_kernels::int8::QDeconv::exact_for(xs[1])
                || (w.scale.len() != 1 && axis != 1 && axis != -3)
            {
                return Ok(None);
            }
            let g = lowbit_core::shape_ops::conv_transpose_geom(xs, ws, c)?;
            (ws[1], vec![xs[0], ws[1], g.out[0], g.out[1]])
        }
        _ => return Ok(None),
    };
    let sw = |c: usize| w.scale[if w.scale.len() == 1 { 0 } else { c }];
    if w.scale.len() != 1 && w.scale.len() != nout {
        return Ok(None);
    }
    let scale: Vec<f32> = (0..nout).map(|c| x.scale[0] * sw(c)).collect();
    let (bi, bf) = match (&bias_deq, bias_f32) {
        (Some(b), _) if b.q.len() == nout => {
            let q: Vec<i32> = b.q.to_i64_vec().iter().map(|&v| v as i32).collect();
            split_bias(Some((&q, &b.scale)), &scale)
        }
        (_, Some(b)) if b.len() == nout => (vec![0; nout], b.to_f32_vec()),
        (_, None) => (vec![0; nout], vec![0.0; nout]),
        _ => return Ok(None),
    };
    let y = |acc: i32, c: usize| (acc.wrapping_add(bi[c]) as f32) * scale[c] + bf[c];
    let total: usize = out_shape.iter().product();
    let mut out = vec![0f32; total];
    match &n.op {
        Op::Conv(c) => {
            let win =
                lowbit_core::shape::window(&xs[2..], &ws[2..], &c.strides, &c.dilations, &c.pads, c.auto_pad, false)?;
            let (h, wd, oh, ow) = (xs[2], xs[3], win.out[0], win.out[1]);
            let (kh, kw) = (ws[2], ws[3]);
            let group = c.group.max(1);
            let (cig, cog) = (xs[1] / group, nout / group);
            let mut acc = vec![0i32; oh * ow];
            for b in 0..xs[0] {
                for co in 0..nout {
                    let g = co / cog;
                    acc.fill(0);
                    for ci in 0..cig {
                        let plane = &xv[((b * xs[1]) + g * cig + ci) * h * wd..][..h * wd];
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let wt = wv[((co * cig + ci) * kh + ky) * kw + kx];
                                for oy in 0..oh {
                                    let iy = (oy * win.strides[0] + ky * win.dilations[0]) as isize
                                        - win.pads_begin[0] as isize;
                                    if iy < 0 || iy >= h as isize {
                                        continue;
                                    }
                                    let row = &plane[iy as usize * wd..][..wd];
                                    for ox in 0..ow {
                                        let ix = (ox * win.strides[1] + kx * win.dilations[1]) as isize
                                            - win.pads_begin[1] as isize;
                                        if ix >= 0 && ix < wd as isize {
                                            acc[oy * ow + ox] += row[ix as usize] * wt;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    let o = &mut out[(b * nout + co) * oh * ow..][..oh * ow];
                    for (d, &a) in o.iter_mut().zip(&acc) {
                        *d = y(a, co);
                    }
                }
            }
        }
        Op::Gemm { .. } | Op::MatMul => {
            let trans_b = matches!(n.op, Op::Gemm { trans_b: true, .. });
            let (m, k) = (xs[0], xs[1]);
            for i in 0..m {
                for j in 0..nout {
                    let mut acc = 0i32;
                    for kk in 0..k {
                        let wt = if trans_b { wv[j * k + kk] } else { wv[kk * nout + j] };
                        acc += xv[i * k + kk] * wt;
                    }
                    out[i * nout + j] = y(acc, j);
                }
            }
        }
        Op::ConvTranspose(c) => {
            // The reference's scatter on the integers (exact in any order).
            let s = lowbit_kernels::refops::DeconvShape::new(xs, ws, c)?;
            let mut acc = vec![0i32; s.out_len()];
            lowbit_kernels::refops::conv_transpose_acc(&s, &xv, &wv, &mut acc);
            let plane = s.oh * s.ow;
            for (i, (d, &a)) in out.iter_mut().zip(&acc).enumerate() {
                *d = y(a, (i / plane) % s.co);
            }
        }
        _ => unreachable!(),
    }
    Ok(Some(Tensor::f32(out_shape, out)))
}
