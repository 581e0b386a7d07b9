//! `lowbit-core` owns the in-memory model: [`Tensor`] and [`DType`], the [`Graph`] of [`Node`]s in
//! topological order with its initializers, the closed [`Op`] enum with typed attributes, shape
//! inference ([`shape::infer`]) and the graph passes that need no data (BatchNorm folding,
//! activation fusion, dead-node removal). It knows nothing about files, SIMD or training.

pub mod error;
pub mod graph;
pub mod op;
pub mod passes;
pub mod shape;
pub mod tensor;

pub use error::{Error, Result};
pub use graph::{Dim, Graph, Node, ValueInfo};
pub use op::{Act, AutoPad, ConvAttrs, Op, PoolAttrs};
pub use tensor::{DType, Data, Tensor};
