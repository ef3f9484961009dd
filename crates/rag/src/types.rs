//! Plain data shared by every stage.
use serde::{Deserialize, Serialize};

/// Free-form document metadata (string keys, JSON values).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// The collection a document belongs to when none is given.
pub const DEFAULT_COLLECTION: &str = "default";

/// A loaded document, before chunking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Caller-given id (kept verbatim; evaluation relies on it) or derived
    /// from the content hash.
    pub id: String,
    pub title: String,
    /// Full extracted text. Chunk offsets are char offsets into this.
    pub text: String,
    pub collection: String,
    #[serde(default)]
    pub metadata: Metadata,
    /// Where it came from (file path, upload name), if anywhere.
    #[serde(default)]
    pub source: Option<String>,
    /// For paged formats (PDF): `(char offset where the page starts, page number)`,
    /// sorted by offset. Empty otherwise.
    #[serde(default)]
    pub pages: Vec<(usize, u32)>,
}

/// A span of a document: the unit that is indexed, retrieved and cited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// `"{doc_id}#{ordinal}"`.
    pub id: String,
    pub doc_id: String,
    pub ordinal: u32,
    pub collection: String,
    pub title: String,
    pub text: String,
    /// Char offsets into the document text: `doc.text[start..end] == text`
    /// (in chars, not bytes).
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
}

/// One retrieval result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub doc_id: String,
    pub chunk_id: String,
    pub score: f32,
    pub title: String,
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub page: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RetrievalMode {
    Lexical,
    Vector,
    #[default]
    Hybrid,
}

impl std::str::FromStr for RetrievalMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lexical" => Ok(Self::Lexical),
            "vector" => Ok(Self::Vector),
            "hybrid" => Ok(Self::Hybrid),
            other => Err(format!(
                "unknown retrieval mode {other:?} (expected lexical, vector or hybrid)"
            )),
        }
    }
}

/// A document as a caller hands it in (loader output, API upload), before the
/// engine assigns an id, hashes it and chunks it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDocument {
    /// Kept verbatim when given; otherwise derived from the content hash.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    pub text: String,
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub source: Option<String>,
    /// See [`Document::pages`].
    #[serde(default)]
    pub pages: Vec<(usize, u32)>,
}
