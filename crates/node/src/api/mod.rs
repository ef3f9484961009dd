//! HTTP handlers, one module per resource.
pub mod admin;
pub mod authn;
pub mod chat;
pub mod conversations;
pub mod documents;
pub mod openai;
pub mod openapi;
pub mod ops;
pub mod resume;
pub mod search;
pub mod types;
pub mod ws;
