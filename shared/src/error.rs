//! One error type for everything the shared crate does. Messages name the file, field or
//! tensor at fault so a CLI can print them as they are.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The source is part of the message (not a `#[source]`), so error chains print it once.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{file}: field `{field}`: {msg}")]
    Config {
        file: PathBuf,
        field: String,
        msg: String,
    },
    #[error("unsupported architecture `{arch}` in {file} (supported: {supported})")]
    UnsupportedArchitecture {
        arch: String,
        file: PathBuf,
        supported: &'static str,
    },
    #[error("tensor `{name}` is missing from {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    #[error("tensor `{name}` in {source_desc} has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        source_desc: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: invalid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: invalid GGUF file: {msg}")]
    Gguf { path: PathBuf, msg: String },
    #[error("{path}: sha256 mismatch: expected {expected}, found {actual}")]
    Sha256Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("prompt has {tokens} tokens but the model context is {max} tokens (max_tokens {requested} requested on top)")]
    ContextOverflow {
        tokens: usize,
        requested: usize,
        max: usize,
    },
    #[error("invalid request: `{param}`: {msg}")]
    InvalidRequest { param: String, msg: String },
    #[error("model: {0}")]
    Candle(candle_core::Error),
    /// The engine thread is gone (it panicked); nothing more can be generated.
    #[error("{0}")]
    EngineFailed(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e)
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    pub fn config(file: impl Into<PathBuf>, field: &str, msg: impl Into<String>) -> Self {
        Error::Config {
            file: file.into(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    pub fn invalid(param: &str, msg: impl Into<String>) -> Self {
        Error::InvalidRequest {
            param: param.to_string(),
            msg: msg.into(),
        }
    }
}
