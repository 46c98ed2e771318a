//! Training: the retrieval loss, the optimizer, the LoRA train step (with
//! gradient accumulation), learning-rate schedules, the data path, checkpoints
//! and the resumable loop a `train` stage runs. Knows models through `model`,
//! nothing of pipelines or retrieval.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod loss;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod step;
