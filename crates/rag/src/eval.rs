//! Evaluation: retrieval (BEIR layout) and answer quality (SQuAD v1.1).
