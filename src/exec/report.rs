//! Progress of a run as events, told to one [`Reporter`]: human lines or JSON
//! lines on stderr, or nothing. The scheduler says what happened; how it is
//! shown is decided here, once.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

/// Something that happened to a stage during a run.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A corrupt artifact was moved aside before anything could read it.
    Quarantined {
        stage: &'a str,
        key: &'a str,
        why: &'a str,
        to: &'a Path,
    },
    Cached {
        stage: &'a str,
        /// Computed by another run while this one waited for it.
        by_other_run: bool,
    },
    Skipped {
        stage: &'a str,
        reason: &'a str,
    },
    /// Another run holds this key's lock.
    Waiting {
        stage: &'a str,
        key: &'a str,
    },
    Running {
        stage: &'a str,
        reason: &'a str,
    },
    Ran {
        stage: &'a str,
        seconds: f64,
    },
    Stopped {
        stage: &'a str,
    },
    Failed {
        stage: &'a str,
        seconds: f64,
        error: &'a str,
        log: Option<&'a Path>,
    },
    /// A missing artifact was downloaded from the remote cache, verified.
    Fetched {
        stage: &'a str,
        key: &'a str,
        bytes: u64,
        seconds: f64,
    },
    /// A stage's artifact was uploaded (`already`: the remote had it).
    Pushed {
        stage: &'a str,
        bytes: u64,
        seconds: f64,
        already: bool,
    },
    /// The remote cache failed or held a corrupt artifact; the run goes on.
    RemoteWarning {
        stage: Option<&'a str>,
        message: &'a str,
    },
}

/// Where a run's events go; shared by the scheduler's worker threads.
pub trait Reporter: Sync {
    fn report(&self, event: &Event<'_>);
}

/// How `run` shows progress (none of it enters any key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// Nothing (library use, tests).
    #[default]
    Off,
    /// One line per event on stderr, for people.
    Human,
    /// One JSON object per event on stderr (`--json`; stdout keeps the report).
    JsonLines,
}

impl Progress {
    pub fn reporter(self) -> &'static dyn Reporter {
        match self {
            Progress::Off => &Silent,
            Progress::Human => &Human,
            Progress::JsonLines => &JsonLines,
        }
    }
}

pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _: &Event<'_>) {}
}

pub struct Human;

impl Reporter for Human {
    fn report(&self, event: &Event<'_>) {
        // Progress is best effort: a closed stderr must not fail the run.
        let _ = writeln!(std::io::stderr().lock(), "{}", human_line(event));
    }
}

pub struct JsonLines;

impl Reporter for JsonLines {
    fn report(&self, event: &Event<'_>) {
        if let Ok(line) = serde_json::to_string(event) {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }
}

fn human_line(event: &Event<'_>) -> String {
    match event {
        Event::Quarantined {
            stage,
            key,
            why,
            to,
        } => format!(
            "  warning  {stage}: artifact {} corrupt ({why}); moved to {}",
            &key[..key.len().min(12)],
            to.display()
        ),
        Event::Cached {
            stage,
            by_other_run: false,
        } => format!("  cached   {stage}"),
        Event::Cached {
            stage,
            by_other_run: true,
        } => format!("  cached   {stage} (computed by a concurrent run)"),
        Event::Skipped { stage, reason } => format!("  skipped  {stage} ({reason})"),
        Event::Waiting { stage, key } => format!(
            "  waiting  {stage}: another run is computing {}",
            &key[..key.len().min(12)]
        ),
        Event::Running { stage, reason } => format!("  running  {stage} ({reason})"),
        Event::Ran { stage, seconds } => format!("  ran      {stage} ({seconds:.2}s)"),
        Event::Stopped { stage } => format!("  stopped  {stage} (interrupted)"),
        Event::Failed {
            stage,
            seconds,
            error,
            log,
        } => {
            let mut line = format!("  FAILED   {stage} ({seconds:.2}s): {error}");
            if let Some(log) = log {
                line.push('\n');
                line.push_str(&log_tail(log));
            }
            line
        }
        Event::Fetched {
            stage,
            bytes,
            seconds,
            ..
        } => format!(
            "  fetched  {stage} from the remote ({:.1} MB, {seconds:.2}s)",
            *bytes as f64 / 1e6
        ),
        Event::Pushed {
            stage,
            already: true,
            ..
        } => format!("  pushed   {stage} (already on the remote)"),
        Event::Pushed {
            stage,
            bytes,
            seconds,
            ..
        } => format!(
            "  pushed   {stage} ({:.1} MB, {seconds:.2}s)",
            *bytes as f64 / 1e6
        ),
        Event::RemoteWarning { stage, message } => {
            format!("  warning  {}: {message}", stage.unwrap_or("remote"))
        }
    }
}

/// The last lines of a failed stage's log, indented under its FAILED line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    let mut out = format!("           log: {}", path.display());
    for line in tail {
        out.push_str("\n           | ");
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines_keep_their_columns() {
        let ran = human_line(&Event::Ran {
            stage: "train",
            seconds: 1.5,
        });
        assert_eq!(ran, "  ran      train (1.50s)");
        let skipped = human_line(&Event::Skipped {
            stage: "eval",
            reason: "needs train, which did not complete",
        });
        assert_eq!(
            skipped,
            "  skipped  eval (needs train, which did not complete)"
        );
    }

    #[test]
    fn json_lines_name_the_event() {
        let line = serde_json::to_value(Event::Running {
            stage: "a",
            reason: "never run",
        })
        .unwrap();
        assert_eq!(
            line,
            serde_json::json!({"event": "running", "stage": "a", "reason": "never run"})
        );
    }
}
