//! Starts the ranks of a distributed job on this host and watches them: one
//! process per rank, each given the environment its [`Backend`] reads (see
//! [`super::distributed`]), one GPU each where there are GPUs, and a free
//! loopback port (or one per rank for `ring`). A rank that fails stops the
//! others at once; cancellation reaches every rank as SIGTERM. A rank calls
//! [`join`] to become part of the group.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::distributed::{Backend, Group};

/// The variable through which a rank learns the backend its launcher chose.
pub const BACKEND_ENV: &str = "XTR_DIST_BACKEND";

/// How long ranks get to stop after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(30);

/// How long, after one rank fails, the others get to end on their own (so the
/// error can tell the rank that crashed from those its crash took down).
const SETTLE: Duration = Duration::from_secs(2);

/// What a [`Launch`] does to rank R's command before it starts.
pub type Prepare = Box<dyn Fn(usize, &mut Command) -> Result<()>>;

/// A distributed job: `ranks` copies of `program args`.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub ranks: usize,
    /// `Ring` or `Nccl` (`Any` is resolved by the ranks, not here).
    pub backend: Backend,
    /// The GPU each rank sees (`CUDA_VISIBLE_DEVICES`), or `None` on the CPU.
    pub gpus: Option<Vec<String>>,
    /// Called with each rank and its command before it starts (the caller's
    /// settings beyond the environment, e.g. the CPUs it may run on).
    pub prepare: Option<Prepare>,
    /// Where the ring backend's hostfile goes.
    pub scratch: PathBuf,
    /// Each rank's stdout and stderr, and a name for messages (`ranks` entries).
    pub logs: Vec<(File, String)>,
}

/// How a job that no rank failed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every rank exited 0.
    Done,
    /// `cancelled` said so; the ranks were asked to stop (SIGTERM) and have.
    Stopped,
}

/// Runs `launch` to the end, polling `cancelled` (a Ctrl-C flag): an error
/// naming the rank that failed (the others killed), else how it ended.
pub fn run(launch: Launch, cancelled: &dyn Fn() -> bool) -> Result<Ended> {
    anyhow::ensure!(
        launch.logs.len() == launch.ranks,
        "{} logs for {} ranks",
        launch.logs.len(),
        launch.ranks
    );
    let env = rank_env(&launch)?;
    let mut children: Vec<Child> = Vec::with_capacity(launch.ranks);
    for (rank, vars) in env.into_iter().enumerate() {
        let (log, _) = &launch.logs[rank];
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.args)
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        die_with_parent(&mut cmd);
        if let Some(prepare) = &launch.prepare {
            prepare(rank, &mut cmd)?;
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                kill_all(&mut children);
                return Err(e).with_context(|| {
                    format!("starting rank {rank} ({})", launch.program.display())
                });
            }
        }
    }
    watch(&mut children, &launch.logs, cancelled)
}

/// In a rank: joins the group its launcher set up (the backend named by
/// [`BACKEND_ENV`]; `any` when unset).
pub fn join() -> Result<Group> {
    let name = std::env::var(BACKEND_ENV).unwrap_or_else(|_| "any".to_string());
    let backend = Backend::parse(&name)
        .with_context(|| format!("{BACKEND_ENV}={name}: expected ring, nccl or any"))?;
    Group::init(backend).with_context(|| format!("joining the {name} group"))
}

/// Each rank's environment.
fn rank_env(launch: &Launch) -> Result<Vec<Vec<(String, String)>>> {
    let n = launch.ranks;
    let mut common = vec![
        ("MLX_WORLD_SIZE".to_string(), n.to_string()),
        (BACKEND_ENV.to_string(), launch.backend.name().to_string()),
    ];
    match launch.backend {
        Backend::Ring => {
            let ports = free_ports(n)?;
            let hosts: Vec<Vec<String>> = ports
                .iter()
                .map(|p| vec![format!("127.0.0.1:{p}")])
                .collect();
            std::fs::create_dir_all(&launch.scratch)
                .with_context(|| format!("creating {}", launch.scratch.display()))?;
            let hostfile = launch.scratch.join("mlx-hostfile.json");
            std::fs::write(&hostfile, serde_json::to_string(&hosts)?)
                .with_context(|| format!("writing {}", hostfile.display()))?;
            common.push((
                "MLX_HOSTFILE".to_string(),
                hostfile.to_string_lossy().into_owned(),
            ));
        }
        Backend::Nccl => {
            let port = free_ports(1)?[0];
            common.push(("NCCL_HOST_IP".to_string(), "127.0.0.1".to_string()));
            common.push(("NCCL_PORT".to_string(), port.to_string()));
        }
        Backend::Any => bail!("the launcher needs a concrete backend (ring or nccl)"),
    }
    if let Some(gpus) = &launch.gpus {
        anyhow::ensure!(
            gpus.len() >= n,
            "{n} ranks but {} GPUs ({})",
            gpus.len(),
            gpus.join(",")
        );
    }
    Ok((0..n)
        .map(|rank| {
            let mut vars = common.clone();
            vars.push(("MLX_RANK".to_string(), rank.to_string()));
            if let Some(gpus) = &launch.gpus {
                vars.push(("CUDA_VISIBLE_DEVICES".to_string(), gpus[rank].clone()));
            }
            vars
        })
        .collect())
}

/// `n` distinct loopback ports that were free a moment ago (all held at once
/// while choosing, so they differ).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free loopback port"))
        .collect::<Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// The rank dies with its launcher, even by SIGKILL (Linux).
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl(2) only sets a flag of the new process; it allocates
        // nothing and is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

fn watch(
    children: &mut [Child],
    logs: &[(File, String)],
    cancelled: &dyn Fn() -> bool,
) -> Result<Ended> {
    let mut done: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut term_at: Option<Instant> = None;
    loop {
        // Cancellation first: a rank that stops for Ctrl-C is not a failure.
        if cancelled() {
            match term_at {
                None => {
                    signal_running(children, &done, libc::SIGTERM);
                    term_at = Some(Instant::now());
                }
                Some(t) if t.elapsed() > GRACE => {
                    kill_all(children);
                    return Ok(Ended::Stopped);
                }
                Some(_) => {}
            }
        }
        for (rank, child) in children.iter_mut().enumerate() {
            if done[rank].is_some() {
                continue;
            }
            let Some(status) = child.try_wait()? else {
                continue;
            };
            done[rank] = Some(status);
            if !status.success() && term_at.is_none() {
                return Err(failure(children, &mut done, logs));
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(match term_at {
                Some(_) => Ended::Stopped,
                None => Ended::Done,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The error for a job one of whose ranks failed. A rank that crashes takes its
/// peers' collectives down with it, so they fail too, a moment later or
/// sooner: wait a little for every rank to end on its own, blame the ranks
/// killed by a signal before those that exited with an error, then stop the rest.
fn failure(
    children: &mut [Child],
    done: &mut [Option<ExitStatus>],
    logs: &[(File, String)],
) -> anyhow::Error {
    let until = Instant::now() + SETTLE;
    while Instant::now() < until && done.iter().any(Option::is_none) {
        for (child, status) in children.iter_mut().zip(done.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait().ok().flatten();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_all(children);
    use std::os::unix::process::ExitStatusExt;
    let mut failed: Vec<(usize, ExitStatus)> = done
        .iter()
        .enumerate()
        .filter_map(|(rank, s)| s.filter(|s| !s.success()).map(|s| (rank, s)))
        .collect();
    failed.sort_by_key(|(rank, s)| (s.signal().is_none(), *rank));
    let n = children.len();
    let what: Vec<String> = failed
        .iter()
        .map(|(rank, s)| format!("rank {rank} of {n} {}", describe(*s)))
        .collect();
    let first = failed.first().map_or(0, |(rank, _)| *rank);
    let (log, name) = &logs[first];
    anyhow::anyhow!(
        "{}; the other ranks were stopped{}",
        what.join(", then "),
        tail(log, name)
    )
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended ({status})"),
    }
}

/// The last lines of a rank's log, for the error (empty for a log we cannot read).
fn tail(log: &File, name: &str) -> String {
    let mut f = match log.try_clone() {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut text = String::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(4000))).is_err()
        || f.read_to_string(&mut text).is_err()
    {
        return format!(" (its log: {name})");
    }
    let lines: Vec<&str> = text.lines().collect();
    let last = lines[lines.len().saturating_sub(15)..].join("\n  ");
    format!("; the end of its log ({name}):\n  {last}")
}

/// Signals the children not yet reaped (a reaped child's pid may be reused).
fn signal_running(children: &[Child], done: &[Option<ExitStatus>], signal: i32) {
    for (child, status) in children.iter().zip(done) {
        if status.is_none() {
            // SAFETY: kill(2) on our own child, not yet waited for, so its pid
            // is still ours; no memory involved.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }
}

fn kill_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        let _ = child.kill();
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}
