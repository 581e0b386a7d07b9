//! `lowbit-quant` owns quantization: schemes and their parameters ([`scheme`]), the weight
//! quantizers (linear, power-of-two, binary, logarithmic, k-means), streaming calibration
//! observers with bounded memory ([`observer`]), calibration over a float plan ([`calibrate`]) and
//! the construction of a standard QDQ graph from a float graph ([`qdq`]), data-free equalization
//! and bias correction ([`dfq`]), per-layer sensitivity and mixed precision ([`sensitivity`],
//! [`select`]) and the whole post-training pipeline as one library call ([`ptq::quantize`]: typed
//! options in, a QDQ graph and its report out, progress by stage). It contains no training loops.

pub mod acteq;
pub mod adaround;
pub mod calibrate;
pub mod dfq;
pub mod observer;
pub mod ptq;
pub mod qdq;
pub mod scheme;
pub mod select;
pub mod sensitivity;

pub use scheme::{Granularity, Mode, QParams, QScheme};
