//! safeloop-train: the trainer library behind the `safeloop-train` binary — the tch model (`model`), the Safe RLHF
//! objectives (`losses`), datasets (`data`), optimisation (`optim`) and the commands built from them.

pub mod bench;
pub mod checkpoint;
pub mod config_file;
pub mod convert;
pub mod data;
pub mod data_cmd;
pub mod device;
pub mod dpo;
pub mod evaluate;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plots;
pub mod ppo;
pub mod push;
pub mod registry_cmd;
pub mod rollout;
pub mod round;
pub mod run_args;
pub mod score;
pub mod sft;
pub mod trainable;
