//! ragfleet-models: model runtimes (local candle models, OpenAI-compatible clients).
