//! The binding's error type: an MLX (C++) exception, an error returned by a
//! Rust closure run under an MLX transform, or a panic caught in one.

/// An error from MLX, carrying its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct Exception {
    what: String,
}

impl Exception {
    /// Builds an exception from a message.
    pub fn new(what: impl Into<String>) -> Self {
        Self { what: what.into() }
    }

    /// The error message (for MLX errors, the C++ exception's `what()`).
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl From<cxx::Exception> for Exception {
    fn from(e: cxx::Exception) -> Self {
        Self::new(e.what())
    }
}

impl From<String> for Exception {
    fn from(what: String) -> Self {
        Self { what }
    }
}

impl From<&str> for Exception {
    fn from(what: &str) -> Self {
        Self::new(what)
    }
}

/// `Result` with [`Exception`] as the error.
pub type Result<T, E = Exception> = std::result::Result<T, E>;
