//! `lowbit-onnx` reads ONNX files into a [`lowbit_core::Graph`] and writes graphs back to ONNX.
//! The protobuf types are generated at build time from the vendored `proto/onnx.proto` (Apache-2.0,
//! from the ONNX project) by prost; nothing here parses protobuf by hand. It executes nothing.

pub mod pb {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
mod read;
mod write;

pub use read::{decode_model, read_model, tensor_from_proto};
pub use write::{encode_model, tensor_to_proto, to_model_proto, write_model};

use thiserror::Error;

/// Why a model could not be read or written. Messages name the file, node and reason.
#[derive(Debug, Error)]
pub enum OnnxError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a valid ONNX model: {reason}")]
    Decode { path: String, reason: String },
    #[error("{path}: {source}")]
    Model { path: String, source: lowbit_core::Error },
}

impl OnnxError {
    pub(crate) fn with_path(self, path: &str) -> Self {
        match self {
            OnnxError::Io { source, .. } => OnnxError::Io { path: path.into(), source },
            OnnxError::Decode { reason, .. } => OnnxError::Decode { path: path.into(), reason },
            OnnxError::Model { source, .. } => OnnxError::Model { path: path.into(), source },
        }
    }
}

impl From<lowbit_core::Error> for OnnxError {
    fn from(e: lowbit_core::Error) -> Self {
        OnnxError::Model { path: "<memory>".into(), source: e }
    }
}

pub type Result<T> = std::result::Result<T, OnnxError>;
