//! The inference backend for OpenAI-compatible servers (llama-server, vLLM, Ollama).
//!
//! # Design
//!
//! The plugin never assumes the model is in-process: this crate will send the same prompts and
//! the equivalent grammar or JSON schema over HTTP, so a studio can point many game servers at
//! one inference fleet. It depends on `hivemind_core` only.
//!
//! # Status
//!
//! Not built yet; the crate exists so the `remote` feature and the workspace layout are stable.
