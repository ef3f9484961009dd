//! ragfleet-node: the HTTP service over ragfleet-rag.
//!
//! REST + SSE + WebSocket API under `/api/v1`, an OpenAI-compatible API under
//! `/v1`, `/health`, `/ready`, `/metrics`, and the web chat page at `/`.

pub mod error;
pub mod gate;
