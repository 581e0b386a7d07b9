use thiserror::Error;

/// Errors about a model's structure or contents. Every variant names the node (or value) concerned.
#[derive(Debug, Error)]
pub enum Error {
    #[error("node '{node}' ({op}): unsupported: {reason}")]
    Unsupported { node: String, op: String, reason: String },
    #[error("node '{node}': {reason}")]
    Node { node: String, reason: String },
    #[error("value '{value}': {reason}")]
    Value { value: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn node(node: &str, reason: impl Into<String>) -> Self {
        Error::Node { node: node.to_string(), reason: reason.into() }
    }
    pub fn value(value: &str, reason: impl Into<String>) -> Self {
        Error::Value { value: value.to_string(), reason: reason.into() }
    }
    /// Prefix the node name to an error that was raised without one.
    pub fn in_node(self, node: &str) -> Self {
        match self {
            Error::Invalid(reason) => Error::Node { node: node.to_string(), reason },
            e => e,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
