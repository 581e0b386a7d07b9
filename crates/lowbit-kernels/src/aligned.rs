//! Buffers whose first element starts a cache line (64 bytes), for the data the SIMD kernels read
//! and write a whole vector at a time: packed weights and the padded rows of depthwise bands.
//!
//! A `Vec<u8>` starts wherever the allocator puts it (16 bytes past a page for large blocks with
//! glibc), so every 64-byte load of it straddles two lines and costs about two. Measured on an AMD
//! EPYC (Zen 5) with AVX-512 VNNI, the depthwise row kernel on a hot 128-channel band: 18.8-20.4
//! cycles per 64-channel output pixel with the band and the output on line boundaries, 21-26 with
//! either 16 or 32 bytes off.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// Bytes every [`Aligned`] buffer starts on.
pub const LINE: usize = 64;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; LINE]);

/// Element types for which every bit pattern is a value and a zero byte pattern is zero.
///
/// # Safety
/// Implementors have no padding, no invalid bit patterns and no drop glue.
pub unsafe trait Pod: Copy + Default + std::fmt::Debug + Send + Sync + 'static {}
// SAFETY: plain integers and floats.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for i8 {}
// SAFETY: as above.
unsafe impl Pod for i32 {}
// SAFETY: as above.
unsafe impl Pod for f32 {}

/// A growable buffer of `T` that starts on a 64-byte boundary; reads as a slice.
#[derive(Clone)]
pub struct Aligned<T: Pod> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> Aligned<T> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Aligned { lines: Vec::new(), len: 0, _t: PhantomData }
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let lines = vec![Line([0; LINE]); Self::lines_for(len)];
        Aligned { lines, len, _t: PhantomData }
    }

    /// A copy of `s`.
    pub fn from_slice(s: &[T]) -> Self {
        let mut b = Self::zeroed(s.len());
        b.copy_from_slice(s);
        b
    }

    fn lines_for(len: usize) -> usize {
        (len * std::mem::size_of::<T>()).div_ceil(LINE)
    }

    /// Grows (new elements are `v`) or shrinks to `len` elements, keeping the ones before.
    pub fn resize(&mut self, len: usize, v: T) {
        let old = self.len;
        if Self::lines_for(len) > self.lines.len() {
            self.lines.resize(Self::lines_for(len), Line([0; LINE]));
        }
        self.len = len;
        if len > old {
            self[old..].fill(v);
        }
    }
}

impl<T: Pod> Default for Aligned<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Pod> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` elements' bytes, `T` is plain data with an
        // alignment of at most 64 (every `Pod` type here), and the lines are initialised.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Pod> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: Pod> std::fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Pod + PartialEq> PartialEq for Aligned<T> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_on_a_line_and_keep_their_contents() {
        let mut b = Aligned::<u8>::from_slice(&[1, 2, 3]);
        assert_eq!(b.as_ptr() as usize % LINE, 0);
        assert_eq!(&b[..], &[1, 2, 3]);
        // Growing past a line keeps the contents and the alignment, and fills the new elements.
        b.resize(200, 7);
        assert_eq!(b.as_ptr() as usize % LINE, 0);
        assert_eq!(&b[..3], &[1, 2, 3]);
        assert!(b[3..].iter().all(|&v| v == 7));
        b.resize(2, 0);
        assert_eq!(&b[..], &[1, 2]);
        let w = Aligned::<i32>::zeroed(33);
        assert_eq!(w.as_ptr() as usize % LINE, 0);
        assert_eq!(w.len(), 33);
        assert!(w.iter().all(|&v| v == 0));
        assert!(Aligned::<f32>::new().is_empty());
    }
}
