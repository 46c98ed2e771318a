//! Training: the retrieval loss, the optimizer, and (next) the LoRA train step
//! and loop. Knows models through `model`, nothing of pipelines or retrieval.

pub mod bench;
pub mod loss;
pub mod optim;
pub mod step;
