//! Small helpers shared by the model runtimes.
use std::fmt::Display;
use std::path::Path;

use ragfleet_rag::RagError;
use sha2::{Digest, Sha256};

/// Read a whole model file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, RagError> {
    std::fs::read(path).map_err(|e| {
        RagError::Model(format!(
            "{}: {e} (model files come from scripts/fetch-models.sh)",
            path.display()
        ))
    })
}

/// A model error naming the file it concerns.
pub(crate) fn model_err(path: &Path, e: impl Display) -> RagError {
    RagError::Model(format!("{}: {e}", path.display()))
}

/// Hex sha256 of a file's bytes.
pub(crate) fn file_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
