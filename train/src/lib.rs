//! safeloop-train: the trainer library behind the `safeloop-train` binary — the tch model (`model`), the Safe RLHF
//! objectives (`losses`), datasets (`data`), optimisation (`optim`) and the commands built from them.

pub mod losses;
pub mod model;
