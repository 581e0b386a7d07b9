//! `lowbit-core` owns the in-memory model: [`Tensor`] and [`DType`], the [`Graph`] of [`Node`]s in
//! topological order with its initializers, the closed [`Op`] enum with typed attributes, shape
//! inference ([`shape::infer`]) and the graph passes that need no data (BatchNorm folding,
//! activation fusion, dead-node removal), the checks every graph passes once it is read
//! ([`validate::validate`]) and the memory limit every size taken from user input is checked
//! against before allocating ([`limits`]). It knows nothing about files, SIMD or training.

pub mod dims;
pub mod error;
pub mod graph;
pub mod limits;
pub mod op;
pub mod passes;
pub mod shape;
pub mod shape_ops;
pub mod tensor;
pub mod validate;

pub use error::{Error, Result};
pub use graph::{Dim, Graph, Node, ValueInfo};
pub use op::{
    Act, AutoPad, Compare, ConvAttrs, ConvTransposeAttrs, CoordMode, NearestMode, Op, PadMode, PoolAttrs, Reduce,
    ResizeAttrs, ResizeMode, Unary, Variadic,
};
pub use tensor::{DType, Data, Tensor};
