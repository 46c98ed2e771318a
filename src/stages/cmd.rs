//! `cmd`: run a shell command and cache its output directory. The runner's
//! general-purpose stage, and the way tests exercise the store.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Arity, Cancelled, Configured, Dep, InputRole, Kind, Stage, StageContext};
use crate::pipeline::{ConfigError, StageSpec};

pub const KIND: Kind = Kind {
    name: "cmd",
    version: 1,
    summary: "run a shell command; outputs go to $XTR_OUT",
    template: include_str!("../../stages/cmd.toml"),
    // Any stage's output, as `XTR_IN_<NAME>`.
    inputs: &[InputRole {
        role: "input",
        kinds: &[],
        arity: Arity::Many,
    }],
    // Whatever the command writes; nothing is promised.
    outputs: &[],
    configure,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CmdParams {
    /// Run with `sh -c` in the pipeline file's directory.
    cmd: String,
    /// Files or directories whose contents enter the key.
    #[serde(default)]
    deps: Vec<String>,
    /// Free-form values for the command; they enter the key.
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
}

struct CmdStage {
    params: CmdParams,
}

fn configure(spec: &StageSpec) -> Result<Configured, ConfigError> {
    let params: CmdParams = super::decode(spec)?;
    if params.cmd.trim().is_empty() {
        return Err(super::param_error(spec, &["cmd"], "`cmd` is empty"));
    }
    let deps = params
        .deps
        .iter()
        .map(|dep| Dep {
            name: dep.clone(),
            path: spec.dir.join(dep),
            origin: spec.params.origin_at(&["deps".to_string()]).clone(),
        })
        .collect();
    Ok(Configured::new(
        spec,
        &params,
        CmdStage {
            params: params.clone(),
        },
    )?
    .with_deps(deps))
}

/// `XTR_IN_<NAME>` / `XTR_PARAM_<NAME>`: upper-cased, anything but [A-Z0-9_] -> `_`.
pub fn env_name(prefix: &str, name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{tail}")
}

impl Stage for CmdStage {
    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.params.cmd)
            .current_dir(ctx.pipeline_dir)
            .env("XTR_OUT", &ctx.out_dir)
            .env("XTR_WORK", &ctx.work_dir)
            .env("XTR_STAGE", ctx.stage)
            .env("XTR_PARAMS", serde_json::to_string(&self.params.params)?)
            .stdin(Stdio::null())
            .stdout(ctx.log.try_clone()?)
            .stderr(ctx.log.try_clone()?)
            // Own process group: we forward cancellation to the whole tree.
            .process_group(0);
        for input in ctx.inputs.all() {
            command.env(env_name("XTR_IN_", &input.stage), &input.dir);
        }
        for (name, value) in &self.params.params {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => value.to_string(),
                _ => continue,
            };
            command.env(env_name("XTR_PARAM_", name), text);
        }
        let mut child = command.spawn().context("cannot start `sh`")?;
        let pgid = child.id() as i32;
        let mut killed_at: Option<Instant> = None;
        // Polled (a blocking wait would not see Ctrl-C): every millisecond at
        // first, so a quick command is not kept waiting, backing off to 10 ms.
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = child.try_wait()? {
                if killed_at.is_some() {
                    return Err(Cancelled.into());
                }
                if !status.success() {
                    match status.code() {
                        Some(code) => bail!("command exited with status {code}"),
                        None => bail!("command was killed by a signal ({status})"),
                    }
                }
                return Ok(());
            }
            if ctx.cancel.is_cancelled() {
                match killed_at {
                    None => {
                        // SAFETY: kill(2) on our child's process group; no memory involved.
                        unsafe { libc::kill(-pgid, libc::SIGTERM) };
                        killed_at = Some(Instant::now());
                    }
                    Some(t) if t.elapsed() > Duration::from_secs(5) => {
                        // SAFETY: as above.
                        unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    }
                    Some(_) => {}
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}
