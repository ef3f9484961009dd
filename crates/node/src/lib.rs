//! ragfleet-node: the HTTP service over ragfleet-rag.
