//! Training checkpoints: one safetensors file holding the adapters, the AdamW
//! moments and the PRNG key as tensors, and the rest of the run's state
//! (step, data position, AdamW's step count, metrics so far, the config it was
//! made under) as JSON in its metadata. Written to a temporary file, synced,
//! then renamed over the previous one: a crash leaves the old checkpoint or
//! the new one, never half of either.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use super::data::DataPosition;
use super::step::TrainerState;
use crate::mlx::{io, Array};

/// The checkpoint's file name inside a run's working directory.
pub const FILE: &str = "checkpoint.safetensors";
const META_KEY: &str = "xtr_train_state";

/// One finished update, as logged and written to `metrics.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based: the number of updates made.
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub samples_per_s: f64,
    pub val_loss: Option<f32>,
    pub val_accuracy: Option<f32>,
}

/// Everything but the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Updates made.
    pub step: u64,
    /// The next micro-batch to train on.
    pub position: DataPosition,
    pub adam_step: i32,
    /// The run's config as JSON: a checkpoint of another config is not resumed.
    pub config: serde_json::Value,
    pub records: Vec<StepRecord>,
    /// Seconds of training before this checkpoint (over all sessions).
    pub train_seconds: f64,
}

/// A run's state at a step boundary.
pub struct Checkpoint {
    pub run: RunState,
    pub trainer: TrainerState,
}

pub fn path_in(work_dir: &Path) -> PathBuf {
    work_dir.join(FILE)
}

/// Writes `ckpt` to `path` atomically.
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<()> {
    let t = &ckpt.trainer;
    let mut tensors: Vec<(String, &Array)> = Vec::new();
    for (name, arrays) in [
        ("param", &t.params),
        ("adam_m", &t.adam_m),
        ("adam_v", &t.adam_v),
    ] {
        tensors.extend(
            arrays
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("{name}.{i}"), a)),
        );
    }
    tensors.push(("rng_key".to_string(), &t.key));
    let state = serde_json::to_string(&ckpt.run).context("serialising the run state")?;
    let meta = HashMap::from([(META_KEY.to_string(), state)]);
    let bytes = io::save_safetensors_bytes(tensors.iter().map(|(k, v)| (k, *v)), Some(meta))?;
    crate::atomic::write(path, |out| out.write_all(&bytes)).context("writing a checkpoint")
}

/// The checkpoint at `path`, or `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Checkpoint>> {
    if !path.is_file() {
        return Ok(None);
    }
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("reading checkpoint {shown}"))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("checkpoint {shown} is not a valid safetensors file: {e}"))?;
    let state = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| anyhow!("checkpoint {shown} has no run state"))?;
    let run: RunState =
        serde_json::from_str(state).with_context(|| format!("checkpoint {shown}: run state"))?;
    let mut tensors =
        io::load_safetensors_bytes(&bytes).map_err(|e| anyhow!("checkpoint {shown}: {e}"))?;
    let mut take_all = |name: &str| -> Vec<Array> {
        (0..)
            .map_while(|i| tensors.remove(&format!("{name}.{i}")))
            .collect()
    };
    let (params, adam_m, adam_v) = (take_all("param"), take_all("adam_m"), take_all("adam_v"));
    let key = tensors
        .remove("rng_key")
        .ok_or_else(|| anyhow!("checkpoint {shown} has no rng_key"))?;
    let trainer = TrainerState {
        params,
        adam_m,
        adam_v,
        adam_step: run.adam_step,
        key,
        steps: run.step,
    };
    Ok(Some(Checkpoint { run, trainer }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_bit_exactly_and_replaces_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert!(load(&path).unwrap().is_none());
        let arr = |v: &[f32]| Array::from_slice(v, &[v.len() as i32]).unwrap();
        let ckpt = |step: u64| Checkpoint {
            run: RunState {
                step,
                position: DataPosition { epoch: 1, batch: 7 },
                adam_step: step as i32,
                config: serde_json::json!({"lr": 2e-5}),
                records: vec![StepRecord {
                    step,
                    total_steps: 9,
                    epoch: 1,
                    loss: 0.5,
                    lr: 1e-5,
                    grad_norm: 2.0,
                    samples_per_s: 3.0,
                    val_loss: None,
                    val_accuracy: Some(0.25),
                }],
                train_seconds: 1.5,
            },
            trainer: TrainerState {
                params: vec![arr(&[0.1, f32::MIN_POSITIVE]), arr(&[-3.0])],
                adam_m: vec![arr(&[1e-30, 2.0]), arr(&[4.0])],
                adam_v: vec![arr(&[5.0, 6.0]), arr(&[7.0])],
                adam_step: 0,
                key: crate::mlx::random::key(11).unwrap(),
                steps: step,
            },
        };
        save(&path, &ckpt(3)).unwrap();
        save(&path, &ckpt(4)).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.run.step, 4);
        assert_eq!(back.trainer.steps, 4);
        assert_eq!(back.trainer.adam_step, 4);
        assert_eq!(back.run.position, DataPosition { epoch: 1, batch: 7 });
        assert_eq!(back.run.records, ckpt(4).run.records);
        let bits =
            |a: &[Array]| -> Vec<Vec<u8>> { a.iter().map(|x| x.to_bytes().unwrap()).collect() };
        assert_eq!(bits(&back.trainer.params), bits(&ckpt(4).trainer.params));
        assert_eq!(bits(&back.trainer.adam_m), bits(&ckpt(4).trainer.adam_m));
        assert_eq!(bits(&back.trainer.adam_v), bits(&ckpt(4).trainer.adam_v));
        assert_eq!(
            back.trainer.key.to_bytes().unwrap(),
            ckpt(4).trainer.key.to_bytes().unwrap()
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE], "no temporary file left behind");
    }
}
