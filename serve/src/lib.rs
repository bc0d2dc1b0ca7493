//! safeloop-serve as a library: the OpenAI-compatible server, its request pipeline, the
//! safety gate, live model versions and the trajectory log writer. `main.rs` is the thin
//! command line over it.

pub mod api;
pub mod choices;
pub mod config;
pub mod engine_task;
pub mod error;
pub mod faults;
pub mod gate;
pub mod generate;
pub mod listen;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod pipeline;
pub mod routes;
pub mod safety;
pub mod server;
pub mod state;
pub mod stream_gate;
pub mod swap;
pub mod trajectory;
pub mod validate;
