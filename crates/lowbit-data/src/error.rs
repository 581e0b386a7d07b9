//! The crate's error type. Every message starts with the file or folder it is about.

use std::path::PathBuf;

/// Everything that can go wrong while loading or writing data.
///
/// Every variant names the path involved, so the `Display` text can be shown to a user as is.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The path does not exist.
    #[error("{}: not found", .path.display())]
    NotFound { path: PathBuf },

    /// An operating-system error while reading or writing.
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        /// What was being attempted, e.g. "cannot read".
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A malformed IDX file (bad magic, truncated, corrupt gzip, inconsistent sizes).
    #[error("{}: {reason}", .path.display())]
    Idx { path: PathBuf, reason: String },

    /// An image file that the `image` crate could not decode.
    #[error("{}: cannot decode image: {reason}", .path.display())]
    Image { path: PathBuf, reason: String },

    /// The image does not fit the preprocessing (e.g. smaller than the crop), or the
    /// preprocessing settings themselves are invalid.
    #[error("{}: {reason}", .path.display())]
    Preprocess { path: PathBuf, reason: String },

    /// Labels that are missing, malformed or do not match the images.
    #[error("{}: {reason}", .path.display())]
    Labels { path: PathBuf, reason: String },

    /// A folder without any image files.
    #[error("no images (.jpg/.jpeg/.png) in {}", .dir.display())]
    NoImages { dir: PathBuf },

    /// A folder or file whose layout is not what was expected (no IDX files, ambiguous
    /// choice between several files, a file where a folder was expected, ...).
    #[error("{}: {reason}", .path.display())]
    Layout { path: PathBuf, reason: String },

    /// A well-known data set that is not installed.
    #[error("{name} not found in {}; install it with: {install}", .dir.display())]
    DatasetMissing { name: &'static str, dir: PathBuf, install: &'static str },
}

/// Result with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    /// Maps an I/O error: `NotFound` becomes [`DataError::NotFound`], anything else [`DataError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path }
        } else {
            DataError::Io { path, what, source }
        }
    }

    /// The file or folder the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            DataError::NotFound { path }
            | DataError::Io { path, .. }
            | DataError::Idx { path, .. }
            | DataError::Image { path, .. }
            | DataError::Preprocess { path, .. }
            | DataError::Labels { path, .. }
            | DataError::Layout { path, .. } => path,
            DataError::NoImages { dir } | DataError::DatasetMissing { dir, .. } => dir,
        }
    }
}
