//! What every kind that runs as several rank processes shares (`train`,
//! `index`): the `gpus` param and its resolution, the backend the ranks use,
//! the launch of `xtr-pipe rank KIND JOB` through [`crate::mlx::launch`] (rank
//! 0's output in the stage log, the others' in the working directory), and the
//! table the hidden `rank` command dispatches on.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::compute::Resolved;
use super::{param_error, Configured, StageContext};
use crate::affinity;
use crate::cancel::CancelToken;
use crate::mlx::distributed::{self, Backend};
use crate::mlx::launch::{self, Launch};
use crate::pipeline::{ConfigError, StageSpec};

/// The `gpus` param as written: a count, or a word (only "all" is valid).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Gpus {
    Count(u64),
    Word(String),
}

impl Default for Gpus {
    fn default() -> Self {
        Gpus::Count(1)
    }
}

/// Overrides the backend the ranks of any kind use (`ring` or `nccl`); by
/// default `nccl` on GPUs (when this MLX has it) and `ring` on the CPU. (Named
/// for the first kind that had ranks.)
pub const BACKEND_ENV: &str = "XTR_TRAIN_BACKEND";

/// `1` makes train ranks evaluate and time each update's all-sum on its own
/// (`sync` in the step log, `sync_seconds` in `train.json`): one host round
/// trip more per update, for measuring what the collective costs. The result
/// is the same with and without it.
pub const TIME_SYNC_ENV: &str = "XTR_PIPE_TIME_SYNC";

/// Whether [`TIME_SYNC_ENV`] asks for the all-sum to be timed.
pub fn time_sync() -> bool {
    std::env::var(TIME_SYNC_ENV).is_ok_and(|v| v == "1")
}

/// `DIR` makes a train stage (each of its ranks) write the host's timeline
/// of every update to `DIR/train-rank{R}.jsonl`: what building and starting
/// the update cost, and how long the host then waited for the device. For
/// telling a host-bound run from a device-bound one; results are unchanged.
pub const TRACE_ENV: &str = "XTR_PIPE_TRACE";

/// The directory [`TRACE_ENV`] names, if set (and not empty).
pub fn trace_dir() -> Option<PathBuf> {
    std::env::var_os(TRACE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// How rank processes are bound to CPUs: `cores` splits the CPUs this
/// process may use into one share of whole cores per rank (hyperthreads of a
/// core stay together); `none` leaves placement to the scheduler;
/// `LIST;LIST;...` gives rank R the R-th CPU list (`0-7,16-23;8-15,24-31`),
/// e.g. the CPUs near each rank's GPU on a host of several sockets. Unset
/// means `none`: on the 2-GPU machines measured (BENCHMARKS.md) binding did
/// not change the rate.
pub const CPU_BIND_ENV: &str = "XTR_PIPE_CPU_BIND";

/// Each rank's CPUs as [`CPU_BIND_ENV`] asks, or `None` for no binding.
pub fn rank_cpus(ranks: usize) -> Result<Option<Vec<Vec<usize>>>> {
    let setting = std::env::var(CPU_BIND_ENV).unwrap_or_default();
    cpu_binding(&setting, ranks, &affinity::allowed()?, affinity::sysfs_core)
}

/// [`rank_cpus`] for the setting `setting`, among the CPUs `allowed` to this
/// process, whose cores `core_of` names. `cores` binds nothing when there
/// are fewer cores than ranks.
fn cpu_binding(
    setting: &str,
    ranks: usize,
    allowed: &[usize],
    core_of: impl Fn(usize) -> Option<(u32, u32)>,
) -> Result<Option<Vec<Vec<usize>>>> {
    match setting.trim() {
        "" | "none" => Ok(None),
        "cores" => Ok(affinity::split(&affinity::cores(allowed, core_of), ranks)),
        lists => {
            let cpus = lists
                .split(';')
                .map(affinity::parse_list)
                .collect::<Result<Vec<_>>>()
                .with_context(|| {
                    format!("{CPU_BIND_ENV}={lists}: expected none, cores or one CPU list per rank")
                })?;
            anyhow::ensure!(
                cpus.len() == ranks,
                "{CPU_BIND_ENV}={lists} gives {} CPU lists for {ranks} ranks; give one per rank \
                 (separated by ;), or cores, or none",
                cpus.len()
            );
            if let Some(cpu) = cpus.iter().flatten().find(|c| !allowed.contains(c)) {
                anyhow::bail!(
                    "{CPU_BIND_ENV}={lists}: CPU {cpu} is not one this process may run on ({})",
                    affinity::format_list(allowed)
                );
            }
            Ok(Some(cpus))
        }
    }
}

/// A test hook: `RANK:STEP` makes that rank abort, as a crashed rank would
/// (`train`: right after update STEP; `index`: once its share is embedded,
/// before its shard is written, whatever STEP).
pub const ABORT_ENV: &str = "XTR_TEST_RANK_ABORT";

/// A test hook: with `DIR` set, an `index` rank writes its pid to
/// `DIR/rank-R.pid` once its shard is written, then waits until it is
/// cancelled, so a test can interrupt a job whose ranks are all running.
pub const HOLD_ENV: &str = "XTR_TEST_RANK_HOLD";

/// The number of ranks `gpus` asks for on `device`: on a GPU at most the GPUs
/// MLX sees ("all": every one); on the CPU that many CPU ranks ("all": one).
pub fn resolve_gpus(spec: &StageSpec, gpus: &Gpus, device: Resolved) -> Result<usize, ConfigError> {
    let seen = match device {
        Resolved::Gpu => distributed::gpu_count().unwrap_or(0),
        Resolved::Cpu => 1,
    };
    match gpus {
        Gpus::Word(w) if w == "all" => Ok(seen.max(1)),
        Gpus::Word(w) => Err(param_error(
            spec,
            &["gpus"],
            format!("gpus must be a count or \"all\", not \"{w}\""),
        )),
        Gpus::Count(0) => Err(super::zero_count(spec, "gpus")),
        Gpus::Count(n) if device == Resolved::Gpu && *n as usize > seen => Err(param_error(
            spec,
            &["gpus"],
            format!("gpus = {n}, but MLX sees {seen} GPU(s) on this machine; set gpus = \"all\" or at most {seen}"),
        )),
        Gpus::Count(n) => Ok(*n as usize),
    }
}

/// Takes `gpus` out of the params the key sees: the number of ranks changes
/// how a result is computed, not what it is.
pub fn without_gpus(mut configured: Configured) -> Configured {
    if let Some(map) = configured.params.as_object_mut() {
        map.remove("gpus");
    }
    configured
}

/// The ranks' backend: [`BACKEND_ENV`] if set, else nccl on GPUs (ring where
/// this MLX lacks it) and ring on the CPU.
pub fn rank_backend(device: Resolved) -> Result<Backend> {
    if let Ok(name) = std::env::var(BACKEND_ENV) {
        return match Backend::parse(&name) {
            Some(b @ (Backend::Ring | Backend::Nccl)) => Ok(b),
            _ => anyhow::bail!("{BACKEND_ENV}={name}: expected ring or nccl"),
        };
    }
    Ok(match device {
        Resolved::Gpu if Backend::Nccl.is_available()? => Backend::Nccl,
        _ => Backend::Ring,
    })
}

/// The GPU ids ranks are given: `CUDA_VISIBLE_DEVICES`'s list when set, else 0, 1, ...
pub fn visible_gpus() -> Vec<String> {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|s| s.trim().to_string()).collect()
        }
        _ => (0..distributed::gpu_count().unwrap_or(0))
            .map(|i| i.to_string())
            .collect(),
    }
}

/// One job of rank processes for a stage.
pub struct RankLaunch<'a, J> {
    /// The stage kind, whose [`entry`] the ranks run.
    pub kind: &'static str,
    /// What the ranks do, for the log and errors ("training", "embedding").
    pub doing: &'static str,
    pub ranks: usize,
    pub device: Resolved,
    /// Written to `rank-job.json` in the working directory; the ranks read it.
    pub job: &'a J,
}

/// Runs `job` as `job.ranks` processes of this binary (`xtr-pipe rank KIND
/// JOB`) and waits for them: Ok once every rank exited 0; [`super::Cancelled`]
/// once Ctrl-C stopped them; else an error naming the rank that failed and
/// saying that nothing was published.
pub fn launch_ranks<J: Serialize>(ctx: &StageContext<'_>, job: &RankLaunch<'_, J>) -> Result<()> {
    let n = job.ranks;
    let device = job.device;
    let backend = rank_backend(device)?;
    let cpus = rank_cpus(n)?;
    std::fs::create_dir_all(&ctx.work_dir)
        .with_context(|| format!("creating {}", ctx.work_dir.display()))?;
    let job_path = ctx.work_dir.join("rank-job.json");
    std::fs::write(&job_path, serde_json::to_string_pretty(job.job)?)
        .with_context(|| format!("writing {}", job_path.display()))?;
    let mut logs = vec![(ctx.log.try_clone()?, "the stage log".to_string())];
    for rank in 1..n {
        let path = ctx.work_dir.join(format!("rank-{rank}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        logs.push((file, path.display().to_string()));
    }
    let bound = match &cpus {
        Some(cpus) => {
            let lists: Vec<String> = cpus.iter().map(|c| affinity::format_list(c)).collect();
            format!(", on CPUs {}", lists.join(" / "))
        }
        None => String::new(),
    };
    writeln!(
        ctx.log.try_clone()?,
        "{}: {n} ranks on the {} with the {} backend{bound}",
        job.kind,
        device.name(),
        backend.name()
    )?;
    let launch = Launch {
        program: std::env::current_exe().context("locating the xtr-pipe binary")?,
        args: vec![
            "rank".to_string(),
            job.kind.to_string(),
            job_path.to_string_lossy().into_owned(),
        ],
        ranks: n,
        backend,
        gpus: (device == Resolved::Gpu).then(visible_gpus),
        prepare: cpus.map(|cpus| -> launch::Prepare {
            Box::new(move |rank, cmd| affinity::bind(cmd, &cpus[rank]))
        }),
        scratch: ctx.work_dir.clone(),
        logs,
    };
    let ended = launch::run(launch, &|| ctx.cancel.is_cancelled())
        .with_context(|| format!("{} on {n} ranks: nothing was published", job.doing))?;
    if ended == launch::Ended::Stopped {
        return Err(super::Cancelled.into());
    }
    Ok(())
}

/// In a rank: the job its stage wrote.
pub fn read_job<J: DeserializeOwned>(path: &Path) -> Result<J> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The device a job names (`gpu`, else the CPU).
pub fn job_device(name: &str) -> Resolved {
    match name {
        "gpu" => Resolved::Gpu,
        _ => Resolved::Cpu,
    }
}

/// The step at which [`ABORT_ENV`] makes this rank abort, if it names this rank.
pub fn abort_hook(rank: usize) -> Result<Option<u64>> {
    let Ok(spec) = std::env::var(ABORT_ENV) else {
        return Ok(None);
    };
    let parsed = spec
        .split_once(':')
        .and_then(|(r, s)| Some((r.parse::<usize>().ok()?, s.parse::<u64>().ok()?)));
    let (r, step) = parsed.with_context(|| format!("{ABORT_ENV}={spec}: expected RANK:STEP"))?;
    Ok((r == rank).then_some(step))
}

/// [`HOLD_ENV`]'s wait, if it is set: Ok at once without it, else
/// [`super::Cancelled`] once `cancel` is.
pub fn hold_hook(rank: usize, cancel: &CancelToken) -> Result<()> {
    let Ok(dir) = std::env::var(HOLD_ENV) else {
        return Ok(());
    };
    let dir = Path::new(&dir);
    let tmp = dir.join(format!(".rank-{rank}.pid"));
    std::fs::write(&tmp, std::process::id().to_string())
        .and_then(|()| std::fs::rename(&tmp, dir.join(format!("rank-{rank}.pid"))))
        .with_context(|| format!("{HOLD_ENV}: writing into {}", dir.display()))?;
    loop {
        cancel.check()?;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A kind's rank entry: runs one rank of the job in the file it is given.
pub type Entry = fn(&Path, &CancelToken) -> Result<()>;

/// The rank entry of `kind`, if that kind runs ranks.
pub fn entry(kind: &str) -> Option<Entry> {
    match kind {
        "train" => Some(super::train::run_rank),
        "index" => Some(super::index::run_rank),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_bind_as_the_setting_says() {
        // 8 CPUs, 4 cores; Linux numbers the second hyperthreads 4-7.
        let all: Vec<usize> = (0..8).collect();
        let bind = |setting: &str, ranks| {
            cpu_binding(setting, ranks, &all, |cpu| Some((0, (cpu % 4) as u32)))
        };
        // Unset: no binding.
        assert_eq!(bind("", 2).unwrap(), None);
        assert_eq!(bind("none", 2).unwrap(), None);
        let halves = vec![vec![0, 1, 4, 5], vec![2, 3, 6, 7]];
        assert_eq!(bind("cores", 2).unwrap(), Some(halves));
        // Fewer cores than ranks: left to the scheduler.
        assert_eq!(bind("cores", 5).unwrap(), None);
        let lists = bind("0-1;7", 2).unwrap();
        assert_eq!(lists, Some(vec![vec![0, 1], vec![7]]));
        let err = bind("0-1", 2).unwrap_err().to_string();
        assert!(err.contains("1 CPU lists for 2 ranks"), "{err}");
        let err = bind("0;8", 2).unwrap_err().to_string();
        assert!(
            err.contains("CPU 8 is not one this process may run on (0-7)"),
            "{err}"
        );
        let err = format!("{:#}", bind("fast", 1).unwrap_err());
        assert!(
            err.contains("expected none, cores or one CPU list per rank"),
            "{err}"
        );
    }
}
