//! Plan steps fused after lowering: a 1x1 integer convolution whose output only the depthwise
//! convolution after it reads becomes one [`QExpandDw`] step (the inverted-residual block's
//! expansion computed band by band into the depthwise input buffer; bit-exact with the two steps),
//! and a float convolution whose output only a QuantizeLinear reads becomes one step writing the
//! bytes band by band.

use std::ops::Range;

use lowbit_kernels::int8::QExpandDw;

use crate::step::{Kind, Operand, Step, StepInfo};

/// Bytes of the arena a buffer operand occupies.
fn bytes(o: &Operand) -> Option<Range<usize>> {
    match o {
        Operand::Buf { off, dtype, shape, .. } => Some(*off..*off + dtype.size() * shape.iter().product::<usize>()),
        Operand::Const(_) => None,
    }
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Does any step after `i + 1`, or a plan output, read step `i`'s output? Later steps reuse parts
/// of its bytes for other values; a read counts only where no step since has written them.
fn read_later(steps: &[Step], outputs: &[(String, Operand)], i: usize) -> bool {
    let Some(mid) = bytes(&steps[i].out) else { return true };
    let mut live = vec![mid];
    for s in &steps[i + 2..] {
        if s.ins.iter().flatten().filter_map(bytes).any(|r| live.iter().any(|l| overlaps(&r, l))) {
            return true;
        }
        if let Some(w) = bytes(&s.out) {
            live = live
                .into_iter()
                .flat_map(|l| [l.start..l.end.min(w.start), l.start.max(w.end)..l.end])
                .filter(|r| r.start < r.end)
                .collect();
        }
        if live.is_empty() {
            return false;
        }
    }
    // What is still there at the end may be a plan output.
    outputs.iter().filter_map(|(_, o)| bytes(o)).any(|r| live.iter().any(|l| overlaps(&r, l)))
}

/// Step `i + 1` reads step `i`'s output as its first input, and nothing after it (nor a plan
/// output) does: the pair can become one step that never writes that value.
fn feeds_only_next(steps: &[Step], outputs: &[(String, Operand)], i: usize) -> bool {
    matches!(steps[i + 1].ins.first(), Some(Some(x)) if bytes(x) == bytes(&steps[i].out))
        && !read_later(steps, outputs, i)
}

/// Do step `i`'s first input and step `i + 1`'s output share bytes of the arena (each dead while
/// the other lives, so the two steps may share them, but one fused step reading the first while it
/// writes the second may not)?
fn input_meets_next_output(steps: &[Step], i: usize) -> bool {
    matches!((steps[i].ins.first().and_then(|o| o.as_ref()).and_then(bytes), bytes(&steps[i + 1].out)),
             (Some(a), Some(b)) if overlaps(&a, &b))
}

/// Step `i + 1`'s report folded into step `i`'s (after the steps were fused), under `kernel`.
fn merge_infos(infos: &mut Vec<StepInfo>, i: usize, kernel: String) {
    let b = infos.remove(i + 1);
    let a = &mut infos[i];
    a.name = format!("{} + {}", a.name, b.name);
    a.op = format!("{}+{}", a.op, b.op);
    a.kernel = kernel;
    a.macs += b.macs;
    a.params += b.params;
    (a.out_shape, a.output) = (b.out_shape, b.output);
}

/// Fuses every expansion + depthwise pair of integer steps in place.
pub(crate) fn fuse_expand_dw(
    steps: &mut Vec<Step>,
    infos: &mut Vec<StepInfo>,
    outputs: &[(String, Operand)],
    isa: &str,
) {
    let mut i = 0;
    while i + 1 < steps.len() {
        let chained = match (&steps[i].kind, &steps[i + 1].kind) {
            (Kind::QConv { c: e, batch: b0 }, Kind::QConv { c: d, batch: b1 }) => {
                b0 == b1
                    && e.direct_gemm()
                    && d.geom.is_depthwise()
                    && feeds_only_next(steps, outputs, i)
                    // The fused step reads the expansion's input while it writes the depthwise output.
                    && !input_meets_next_output(steps, i)
            }
            _ => false,
        };
        if !chained {
            i += 1;
            continue;
        }
        let second = steps.remove(i + 1);
        let first = std::mem::replace(&mut steps[i].kind, Kind::Act(lowbit_core::Act::None));
        let (Kind::QConv { c: e, batch }, Kind::QConv { c: d, .. }) = (first, second.kind) else { unreachable!() };
        match QExpandDw::fuse(e, d) {
            Ok(f) => {
                steps[i].kind = Kind::QExpandDw { f: Box::new(f), batch };
                steps[i].out = second.out;
                merge_infos(infos, i, format!("int8 expand+depthwise ({isa})"));
            }
            Err((e, d)) => {
                steps[i].kind = Kind::QConv { c: e, batch };
                steps.insert(i + 1, Step { kind: Kind::QConv { c: d, batch }, ins: second.ins, out: second.out });
            }
        }
        i += 1;
    }
}

/// Fuses every float convolution (one shifted-rows group) whose output only the QuantizeLinear
/// after it reads, into NHWC bytes, into one step ([`lowbit_kernels::int8::edges::conv_quantize`]:
/// the same bytes, the f32 output never written whole).
pub(crate) fn fuse_conv_quantize(steps: &mut Vec<Step>, infos: &mut Vec<StepInfo>, outputs: &[(String, Operand)]) {
    let mut i = 0;
    while i + 1 < steps.len() {
        let fits = match (&steps[i].kind, &steps[i + 1].kind) {
            (Kind::Conv { p, batch }, Kind::Quantize { layout: Some((n, c, plane)), .. }) => {
                *n == *batch
                    && *c == p.geom.c_out
                    && *plane == p.geom.oh * p.geom.ow
                    && p.bands()
                    && feeds_only_next(steps, outputs, i)
                    // One image's input may share bytes with the output: the step copies all of it
                    // into its padded planes (scratch) before it writes a byte. With more images,
                    // image 0's output would overwrite image 1's input.
                    && (*batch == 1 || !input_meets_next_output(steps, i))
            }
            _ => false,
        };
        if !fits {
            i += 1;
            continue;
        }
        let second = steps.remove(i + 1);
        let first = std::mem::replace(&mut steps[i].kind, Kind::Act(lowbit_core::Act::None));
        let (Kind::Conv { p, batch }, Kind::Quantize { q, .. }) = (first, second.kind) else { unreachable!() };
        steps[i].kind = Kind::ConvQuant { p, q, batch };
        steps[i].out = second.out;
        let kernel = format!("{} + quantize", infos[i].kernel);
        merge_infos(infos, i, kernel);
        i += 1;
    }
}
