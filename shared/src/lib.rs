//! safeloop-shared: what safeloop-serve and safeloop-train must agree on — model loading
//! (HF safetensors + tokenizer + chat template, GGUF), the candle model, score models.

pub mod assets;
pub mod calibration;
pub mod chat_template;
pub mod config;
pub mod engine;
pub mod error;
pub mod loader;
pub mod math;
pub mod model;
pub mod quant;
pub mod registry;
pub mod rope;
pub mod runtime;
pub mod scoring;
pub mod tokenizer;
pub mod trajlog;
pub mod weights;

pub use chat_template::ChatMessage;
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use loader::{load_causal_lm, load_score_model, LoadOptions, Loaded};
pub use tokenizer::Tokenizer;
