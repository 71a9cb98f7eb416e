//! The in-process llama.cpp inference backend for hivemind.
//!
//! # Design
//!
//! llama-cpp-2 states that its API is unstable, so this is the only crate of the workspace that
//! names it: everything else speaks `hivemind_core`'s backend trait. A llama context borrows its
//! model, so the pair lives together on one worker thread.
//!
//! # Status
//!
//! The backend itself (continuous batching, the prefix key/value tree, grammar-constrained
//! sampling) is not built yet. The `kernel_probe` example measures this machine's prompt and
//! generation throughput with the same llama.cpp build the backend will use.
