//! What one GEMM task sees: how it reads A ([`ASrc`]), where its rows go ([`RowMap`]), its block
//! of the output ([`Tile`]), and the table of kernels each instruction-set module exports
//! ([`Kernels`]). Shared by the driver ([`crate::int8::gemm`]) and the per-ISA modules.

use crate::epilogue::{OutPtr, Requant};
use crate::geom::DwGeom;
use crate::int8::pack::{PackedB, PackedDw};

/// How the GEMM reads row `i` of A: `taps` runs of `kc` bytes (a multiple of 4) at
/// `i·lda + taps[t]`, in the order B's reduction index uses (`k = t·kc + c`). A plain matrix is
/// one tap at offset 0 with `kc = k4`; a stride-1 convolution reads its window straight from the
/// zero-point-padded input, one tap per window position ("shifted rows", no im2col copy).
#[derive(Clone, Copy, Debug)]
pub struct ASrc<'a> {
    pub lda: usize,
    pub taps: &'a [usize],
    pub kc: usize,
}

/// Where GEMM row `i` is stored: row `i`, or (shifted rows) row `(i / wp)·ow + i % wp` when
/// `i % wp < ow` and nowhere otherwise (the padding columns of the shifted input).
#[derive(Clone, Copy, Debug)]
pub enum RowMap {
    Linear,
    Padded { wp: usize, ow: usize },
}

/// Walks [`RowMap`] over consecutive GEMM rows with one division at the start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowCursor {
    map: RowMap,
    /// `Padded`: column `i % wp` and output row of column 0 (`(i / wp)·ow`); `Linear`: the row.
    x: usize,
    base: usize,
}

impl RowCursor {
    #[inline(always)]
    pub(crate) fn new(map: RowMap, i: usize) -> RowCursor {
        match map {
            RowMap::Linear => RowCursor { map, x: 0, base: i },
            RowMap::Padded { wp, ow } => RowCursor { map, x: i % wp, base: (i / wp) * ow },
        }
    }

    /// The current row's output row, then steps to the next row.
    #[inline(always)]
    pub(crate) fn next_row(&mut self) -> Option<usize> {
        match self.map {
            RowMap::Linear => {
                self.base += 1;
                Some(self.base - 1)
            }
            RowMap::Padded { wp, ow } => {
                let r = (self.x < ow).then_some(self.base + self.x);
                self.x += 1;
                if self.x == wp {
                    self.x = 0;
                    self.base += ow;
                }
                r
            }
        }
    }
}

impl RowMap {
    #[inline(always)]
    pub fn out_row(self, i: usize) -> Option<usize> {
        match self {
            RowMap::Linear => Some(i),
            RowMap::Padded { wp, ow } => {
                let x = i % wp;
                (x < ow).then(|| (i / wp) * ow + x)
            }
        }
    }
}

/// One GEMM task: rows `i0..i0+rows` (A already advanced to row `i0`), columns `j0..j0+jn`.
#[derive(Clone, Copy, Debug)]
pub struct Tile {
    pub rows: usize,
    pub i0: usize,
    pub map: RowMap,
    pub j0: usize,
    pub jn: usize,
    pub ldc: usize,
}

#[derive(Clone, Copy)]
pub(crate) struct SendConst(pub *const u8);
unsafe impl Send for SendConst {}
unsafe impl Sync for SendConst {}
impl SendConst {
    pub(crate) fn get(self) -> *const u8 {
        self.0
    }
}

/// The kernels of one integer path: what the driver calls, and all it knows about an ISA.
pub(crate) struct Kernels {
    /// One GEMM task (rows `t.i0..`, columns `t.j0..`), A already advanced to row `t.i0`.
    pub gemm_tile: unsafe fn(&Tile, *const u8, &ASrc, &PackedB, &Requant, OutPtr),
    /// One output row of a depthwise convolution on the padded NHWC input.
    pub depthwise_row: unsafe fn(&DwGeom, &[u8], &PackedDw, &Requant, OutPtr, usize),
}
