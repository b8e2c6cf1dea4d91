//! One function per command: do the local work first (so mistakes in files show before any
//! network), then talk to the coordinator, then print in the chosen format.

use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use rollgate_proto::pb::RolloutStatus;
use rollgate_proto::spec::RolloutSpec;
use serde_json::Value;
use thiserror::Error;

use crate::args::{ArtifactCommand, Cli, Command, OutputFormat, RolloutCommand};
use crate::client::Coordinator;
use crate::{artifact, json, render, spec_file, watch};

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Everything went as asked.
    Success,
    /// A followed rollout ended failed, aborted or rolled back.
    RolloutNotSucceeded,
}

/// Standard output was closed (e.g. `rollgate hosts | head -1`): stop quietly.
#[derive(Debug, Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Finish> {
    let result = dispatch(cli).await;
    match result {
        Err(e) if e.is::<StdoutClosed>() => Ok(Finish::Success),
        other => other,
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<Finish> {
    let url = cli.coordinator.as_str();
    let format = cli.output;
    match cli.command {
        Command::Hosts => hosts(url, format).await,
        Command::Rollout(cmd) => match cmd {
            RolloutCommand::Start { spec, watch } => start(url, format, &spec, watch).await,
            RolloutCommand::Status { id, watch } => {
                status(url, format, id.as_deref().unwrap_or_default(), watch).await
            }
            RolloutCommand::List => list(url, format).await,
            RolloutCommand::Pause { id } => steer(url, format, Steer::Pause, &id).await,
            RolloutCommand::Resume { id } => steer(url, format, Steer::Resume, &id).await,
            RolloutCommand::Abort { id } => steer(url, format, Steer::Abort, &id).await,
        },
        Command::Artifact(ArtifactCommand::Push { file }) => push(url, format, &file).await,
    }
}

/// Maps a failed write to stdout: a closed pipe stops quietly, anything else is an error.
pub(crate) fn output_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

/// Prints `text` and a newline to stdout.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(output_error)
}

/// Prints a JSON value, pretty, to stdout.
fn emit_json(value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot format JSON output")?;
    emit(&text)
}

/// Prints either the text or the JSON form.
fn emit_as(
    format: OutputFormat,
    text: impl FnOnce() -> String,
    json: impl FnOnce() -> Value,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Text => emit(&text()),
        OutputFormat::Json => emit_json(&json()),
    }
}

/// Unix time in milliseconds, for relative times.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn hosts(url: &str, format: OutputFormat) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let resp = coord.list_hosts().await?;
    emit_as(
        format,
        || render::hosts_table(&resp.hosts, now_ms()).join("\n"),
        || json::list_hosts(&resp),
    )?;
    Ok(Finish::Success)
}

async fn start(
    url: &str,
    format: OutputFormat,
    spec_path: &Path,
    follow: bool,
) -> anyhow::Result<Finish> {
    let loaded = spec_file::load(spec_path)?;
    let coord = Coordinator::connect(url).await?;
    let text = match &loaded.artifact {
        None => loaded.text.clone(),
        Some(file) => {
            let pushed = artifact::push_file(&coord, file).await.with_context(|| {
                format!(
                    "{}: cannot push release.file {}",
                    spec_path.display(),
                    file.display()
                )
            })?;
            if format == OutputFormat::Text {
                eprintln!(
                    "pushed {} to the coordinator's store: {}",
                    file.display(),
                    render::pushed(&pushed.sha256, pushed.size)
                );
            }
            let text = spec_file::with_pushed_release(&loaded.text, &pushed.sha256, pushed.size)
                .map_err(|e| anyhow!("{}: {e}", spec_path.display()))?;
            RolloutSpec::parse_resolved(&text)
                .map_err(|e| anyhow!("{}: {e}", spec_path.display()))?;
            text
        }
    };
    let status = coord.create_rollout(text).await?;
    match format {
        OutputFormat::Text => emit(&render::started(&status))?,
        // With --watch the first streamed status says the same thing; print it only once.
        OutputFormat::Json if !follow => emit_json(&json::rollout_status(&status))?,
        OutputFormat::Json => {}
    }
    if follow {
        watch::follow(&coord, &status.id, format).await
    } else {
        Ok(Finish::Success)
    }
}

async fn status(url: &str, format: OutputFormat, id: &str, follow: bool) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    if follow {
        return watch::follow(&coord, id, format).await;
    }
    let status = coord.get_rollout(id).await?;
    emit_as(
        format,
        || render::status_block(&status),
        || json::rollout_status(&status),
    )?;
    Ok(Finish::Success)
}

async fn list(url: &str, format: OutputFormat) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let resp = coord.list_rollouts().await?;
    emit_as(
        format,
        || render::rollouts_table(&resp.rollouts, now_ms()).join("\n"),
        || json::list_rollouts(&resp),
    )?;
    Ok(Finish::Success)
}

/// The operator's levers on a running rollout.
#[derive(Debug, Clone, Copy)]
enum Steer {
    Pause,
    Resume,
    Abort,
}

async fn steer(url: &str, format: OutputFormat, how: Steer, id: &str) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let status: RolloutStatus = match how {
        Steer::Pause => coord.pause_rollout(id).await?,
        Steer::Resume => coord.resume_rollout(id).await?,
        Steer::Abort => coord.abort_rollout(id).await?,
    };
    emit_as(
        format,
        || render::phase_changed(&status),
        || json::rollout_status(&status),
    )?;
    Ok(Finish::Success)
}

async fn push(url: &str, format: OutputFormat, file: &Path) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let pushed = artifact::push_file(&coord, file).await?;
    emit_as(
        format,
        || render::pushed(&pushed.sha256, pushed.size),
        || json::pushed(&pushed.sha256, pushed.size),
    )?;
    Ok(Finish::Success)
}
