use std::path::PathBuf;

/// Every error the engine returns. Variants are coarse on purpose: callers
/// (the HTTP layer, the CLI) map them to a status or a message.
#[derive(Debug, thiserror::Error)]
pub enum RagError {
    /// Input the caller gave us is unusable (empty query, bad parameter...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A file could not be loaded; always names the file and the reason.
    #[error("{path}: {reason}")]
    Load { path: PathBuf, reason: String },
    /// The format of a file or upload is not one we load.
    #[error("unsupported format: {0}")]
    Unsupported(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing to create exists already (a user name, …).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A model could not be loaded or run.
    #[error("model error: {0}")]
    Model(String),
    /// A remote service (OpenAI-compatible server, database) failed.
    #[error("upstream error: {0}")]
    Upstream(String),
    #[error("storage error: {0}")]
    Storage(String),
    /// The store cannot be reached right now (connection refused or lost,
    /// server restarting, pool exhausted, database busy): the same call may
    /// succeed in a moment.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    #[error("index error: {0}")]
    Index(String),
    /// The operation was cancelled (e.g. the client went away).
    #[error("cancelled")]
    Cancelled,
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = RagError> = std::result::Result<T, E>;
