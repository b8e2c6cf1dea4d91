//! One function per command: do the local work first (so mistakes in files show before any
//! network), then talk to the coordinator, then print in the chosen format.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rollgate_proto::pb::{HostActionResponse, RolloutStatus};
use rollgate_proto::text::{printable_json, printable_lines};
use serde_json::Value;
use thiserror::Error;

use crate::args::{
    ArtifactCommand, CertRole, CertsCommand, Cli, Command, HostCommand, OperatorRole, OutputFormat,
    ReleaseCommand, RolloutCommand,
};
use crate::client::{Coordinator, Target};
use crate::registry::{self, RegistryOpts};
use crate::{artifact, json, render, spec_file, watch};
use rollgate_proto::tls::{Role, TlsConfig};

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
    let target = Target {
        url: cli.coordinator.clone(),
        tls: TlsConfig {
            ca: cli.ca.clone(),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
            insecure_plaintext: cli.insecure,
        },
    };
    let url = &target;
    let format = cli.output;
    match cli.command {
        Command::Hosts => hosts(url, format).await,
        Command::Rollout(cmd) => match cmd {
            RolloutCommand::Start {
                spec,
                watch,
                registry,
            } => start(url, format, &spec, watch, &registry).await,
            RolloutCommand::Plan { spec, registry } => plan(url, format, &spec, &registry).await,
            RolloutCommand::Status { id, watch } => {
                status(url, format, id.as_deref().unwrap_or_default(), watch).await
            }
            RolloutCommand::List => list(url, format).await,
            RolloutCommand::Pause { id } => steer(url, format, Steer::Pause, &id).await,
            RolloutCommand::Resume { id } => steer(url, format, Steer::Resume, &id).await,
            RolloutCommand::Abort { id } => steer(url, format, Steer::Abort, &id).await,
            RolloutCommand::Promote { id } => steer(url, format, Steer::Promote, &id).await,
            RolloutCommand::Rollback { id, watch } => rollback(url, format, &id, watch).await,
        },
        Command::Artifact(ArtifactCommand::Push { file }) => push(url, format, &file).await,
        Command::History { service } => history(url, format, &service).await,
        Command::Events {
            rollout,
            service,
            host,
            since,
            follow,
        } => {
            let query = crate::events::Query::new(rollout, service, host, since.as_deref())?;
            crate::events::show(url, format, query, follow).await
        }
        Command::Host(HostCommand::Fence { host }) => {
            host_action(url, format, HostAction::Fence, &host).await
        }
        Command::Host(HostCommand::Forget { host, yes }) => {
            confirm_forget(&host, yes)?;
            host_action(url, format, HostAction::Forget, &host).await
        }
        Command::Host(HostCommand::Label {
            host,
            labels,
            services,
            clear,
        }) => pin(url, format, &host, &labels, services, clear).await,
        Command::Certs(cmd) => certs(cmd, format),
        Command::Release(cmd) => release(cmd, format).await,
        Command::Dashboard { listen, open } => crate::dashboard::run(url, &listen, open).await,
    }
}

async fn release(cmd: ReleaseCommand, format: OutputFormat) -> anyhow::Result<Finish> {
    let v = match cmd {
        ReleaseCommand::Keygen { out } => {
            let k = crate::release::keygen(&out)?;
            if format == OutputFormat::Text {
                println!(
                    "key {}: private {} (keep it off the fleet), public {} (pin it in the \
                     agents' [signing] keys)",
                    k.key_id,
                    k.private.display(),
                    k.public.display()
                );
                return Ok(Finish::Success);
            }
            serde_json::json!({
                "key_id": k.key_id,
                "private": k.private,
                "public": k.public,
            })
        }
        ReleaseCommand::Sign {
            key,
            service,
            version,
            fleet,
            env,
            expires,
            sig,
            artifact,
        } => {
            let expires = crate::release::parse_expires(&expires, std::time::SystemTime::now())?;
            let scope = rollgate_proto::signing::Scope::new(&fleet, env.as_deref().unwrap_or(""));
            let (f, out) =
                crate::release::sign(&key, &scope, &service, &version, expires, &artifact, sig)
                    .await?;
            let until = rollgate_proto::signing::rfc3339(rollgate_proto::signing::unix(f.expires));
            if format == OutputFormat::Text {
                println!(
                    "signed {} {} for {} (sha256 {}, {} bytes) with key {}, valid until {until}: {}",
                    f.service,
                    f.version,
                    scope.describe(),
                    f.sha256,
                    f.size,
                    f.key_id,
                    out.display()
                );
                return Ok(Finish::Success);
            }
            serde_json::json!({
                "service": f.service,
                "version": f.version,
                "fleet": f.fleet,
                "env": f.env,
                "sha256": f.sha256,
                "size": f.size,
                "expires": until,
                "key_id": f.key_id,
                "signature_file": out,
            })
        }
        ReleaseCommand::Pin {
            image,
            out,
            registry,
        } => {
            let pinned = registry::pin_to_file(&image, &out, &registry).await?;
            if format == OutputFormat::Text {
                println!(
                    "{image} is {pinned}: its release artifact is {} (sign it with `rollgate \
                     release sign`, and name it as release.file in the rollout spec)",
                    out.display()
                );
                return Ok(Finish::Success);
            }
            serde_json::json!({ "image": image, "pinned": pinned.to_string(), "artifact": out })
        }
    };
    println!("{v}");
    Ok(Finish::Success)
}

fn certs(cmd: CertsCommand, format: OutputFormat) -> anyhow::Result<Finish> {
    let issued = match cmd {
        CertsCommand::Init { fleet, dir, days } => {
            let ca = crate::certs::init(&dir, &fleet, days)?;
            if format == OutputFormat::Text {
                println!(
                    "fleet CA for {fleet}: {} (give it to every coordinator, agent and operator)\n\
                     CA key: {} (keep it off the fleet; it signs every identity)\n\
                     next: rollgate certs issue coordinator|host|operator NAME --dir {}",
                    ca.cert.display(),
                    ca.key.display(),
                    dir.display()
                );
                return Ok(Finish::Success);
            }
            ca
        }
        CertsCommand::Issue {
            kind,
            name,
            dir,
            out_dir,
            dns,
            ip,
            days,
            role,
            services,
        } => {
            let role = match (kind, role) {
                (CertRole::Coordinator, OperatorRole::Operator) => Role::Coordinator,
                (CertRole::Host, OperatorRole::Operator) => Role::Host,
                (CertRole::Operator, OperatorRole::Operator) => Role::Operator,
                (CertRole::Operator, OperatorRole::Viewer) => Role::Viewer,
                (CertRole::Operator, OperatorRole::Deployer) => Role::Deployer,
                (_, OperatorRole::Viewer | OperatorRole::Deployer) => {
                    anyhow::bail!("--role is for operator certificates")
                }
            };
            let opts = crate::certs::IssueOpts {
                dns,
                ips: ip,
                days,
                out_dir,
                services,
            };
            let issued = crate::certs::issue(&dir, role, &name, &opts)?;
            if format == OutputFormat::Text {
                println!(
                    "{}: {} and {} (valid until {})",
                    issued.uri,
                    issued.cert.display(),
                    issued.key.display(),
                    issued.not_after.date()
                );
                return Ok(Finish::Success);
            }
            issued
        }
        CertsCommand::Show { file } => {
            print!("{}", crate::certs::show(&file)?);
            return Ok(Finish::Success);
        }
    };
    let v = serde_json::json!({
        "identity": issued.uri,
        "cert": issued.cert,
        "key": issued.key,
        "not_after": issued.not_after.unix_timestamp(),
    });
    println!("{v}");
    Ok(Finish::Success)
}

/// Maps a failed write to stdout: a closed pipe stops quietly, anything else is an error.
pub(crate) fn output_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

/// Prints `text` and a newline to stdout, control characters other than its line breaks
/// escaped (a second line of defence: `render` escapes peer text field by field).
fn emit(text: &str) -> anyhow::Result<()> {
    write_out(&printable_lines(text))
}

/// Prints a JSON value, pretty, to stdout, with characters a terminal acts on escaped as JSON.
fn emit_json(value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot format JSON output")?;
    write_out(&printable_json(&text))
}

/// Writes `text` and a newline to stdout as it is.
fn write_out(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(output_error)
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
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn hosts(url: &Target, format: OutputFormat) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let resp = coord.list_hosts().await?;
    emit_as(
        format,
        || render::hosts_table(&resp.hosts, now_ms()).join("\n"),
        || json::message(&resp),
    )?;
    Ok(Finish::Success)
}

async fn start(
    url: &Target,
    format: OutputFormat,
    spec_path: &Path,
    follow: bool,
    reg: &RegistryOpts,
) -> anyhow::Result<Finish> {
    let loaded = spec_file::load(spec_path)?;
    let coord = Coordinator::connect(url).await?;
    let say = format == OutputFormat::Text;
    let text = match (&loaded.artifact, &loaded.spec.release.image) {
        (None, Some(image)) => registry::push_image(&coord, &loaded, image, reg, say).await?,
        (None, None) => loaded.text.clone(),
        (Some(file), _) => {
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
            loaded.resolved_with(&pushed.sha256, pushed.size)?
        }
    };
    let status = coord.create_rollout(text).await?;
    announce_and_follow(&coord, format, follow, &status, &render::started(&status)).await
}

async fn plan(
    url: &Target,
    format: OutputFormat,
    spec_path: &Path,
    reg: &RegistryOpts,
) -> anyhow::Result<Finish> {
    let loaded = spec_file::load(spec_path)?;
    // Hash before connecting: a bad file shows without any network.
    let (text, hashed) = match &loaded.spec.release.image {
        Some(image) => {
            let say = format == OutputFormat::Text;
            (registry::plan_image(&loaded, image, reg, say).await?, None)
        }
        None => spec_file::for_plan(&loaded).await?,
    };
    if let (Some(file), Some(hashed), OutputFormat::Text) = (&loaded.artifact, &hashed, format) {
        eprintln!(
            "hashed {} locally: {} (not pushed; `rollgate rollout start` pushes it)",
            file.display(),
            render::pushed(&hashed.sha256, hashed.size)
        );
    }
    let coord = Coordinator::connect(url).await?;
    let plan = coord.plan_rollout(text).await?;
    emit_as(
        format,
        || render::plan_block(&plan),
        || json::message(&plan),
    )?;
    Ok(Finish::Success)
}

async fn status(
    url: &Target,
    format: OutputFormat,
    id: &str,
    follow: bool,
) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    if follow {
        return watch::follow(&coord, id, format).await;
    }
    let status = coord.get_rollout(id).await?;
    emit_as(
        format,
        || render::status_block(&status),
        || json::message(&status),
    )?;
    Ok(Finish::Success)
}

async fn list(url: &Target, format: OutputFormat) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let resp = coord.list_rollouts().await?;
    emit_as(
        format,
        || {
            let mut lines = render::rollouts_table(&resp.rollouts, now_ms());
            // A rollout the coordinator cannot read: the others are listed, this one named
            // (the text is escaped on output).
            lines.extend(
                resp.rollouts
                    .iter()
                    .filter(|r| !r.unreadable.is_empty())
                    .map(|r| format!("{}: cannot be read: {}", r.id, r.unreadable)),
            );
            lines.join("\n")
        },
        || json::message(&resp),
    )?;
    Ok(Finish::Success)
}

/// The operator's levers on a running rollout.
#[derive(Debug, Clone, Copy)]
enum Steer {
    Pause,
    Resume,
    Abort,
    Promote,
}

async fn steer(url: &Target, format: OutputFormat, how: Steer, id: &str) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let status: RolloutStatus = match how {
        Steer::Pause => coord.pause_rollout(id).await?,
        Steer::Resume => coord.resume_rollout(id).await?,
        Steer::Abort => coord.abort_rollout(id).await?,
        Steer::Promote => coord.promote_rollout(id).await?,
    };
    emit_as(
        format,
        || render::phase_changed(&status),
        || json::message(&status),
    )?;
    Ok(Finish::Success)
}

async fn push(url: &Target, format: OutputFormat, file: &Path) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let pushed = artifact::push_file(&coord, file).await?;
    emit_as(
        format,
        || render::pushed(&pushed.sha256, pushed.size),
        || json::pushed(&pushed.sha256, pushed.size),
    )?;
    Ok(Finish::Success)
}

async fn rollback(
    url: &Target,
    format: OutputFormat,
    id: &str,
    follow: bool,
) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let status = coord.rollback_rollout(id).await?;
    let line = render::rollback_started(&status, id);
    announce_and_follow(&coord, format, follow, &status, &line).await
}

/// Prints that a rollout started (`line` in text, the status in JSON), then follows it when
/// asked. With --watch the first streamed status says the same thing, so JSON prints it once.
async fn announce_and_follow(
    coord: &Coordinator,
    format: OutputFormat,
    follow: bool,
    status: &RolloutStatus,
    line: &str,
) -> anyhow::Result<Finish> {
    match format {
        OutputFormat::Text => emit(line)?,
        OutputFormat::Json if !follow => emit_json(&json::message(status))?,
        OutputFormat::Json => {}
    }
    if follow {
        watch::follow(coord, &status.id, format).await
    } else {
        Ok(Finish::Success)
    }
}

async fn history(url: &Target, format: OutputFormat, service: &str) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let resp = coord.get_history(service).await?;
    emit_as(
        format,
        || render::history_table(service, &resp.entries, now_ms()).join("\n"),
        || json::message(&resp),
    )?;
    Ok(Finish::Success)
}

/// What an operator can vouch for about a host.
#[derive(Debug, Clone, Copy)]
enum HostAction {
    Fence,
    Forget,
}

async fn host_action(
    url: &Target,
    format: OutputFormat,
    action: HostAction,
    host: &str,
) -> anyhow::Result<Finish> {
    let coord = Coordinator::connect(url).await?;
    let resp: HostActionResponse = match action {
        HostAction::Fence => coord.fence_host(host).await?,
        HostAction::Forget => coord.forget_host(host).await?,
    };
    emit_as(format, || resp.message.clone(), || json::message(&resp))?;
    Ok(Finish::Success)
}

/// `rollgate host label HOST key=value... [--services a,b] [--clear]`.
async fn pin(
    url: &Target,
    format: OutputFormat,
    host: &str,
    labels: &[String],
    services: Vec<String>,
    clear: bool,
) -> anyhow::Result<Finish> {
    let mut map = std::collections::HashMap::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else {
            anyhow::bail!("label {l:?} is not key=value (e.g. site=fra1)");
        };
        map.insert(k.to_string(), v.to_string());
    }
    let req = rollgate_proto::pb::PinHostRequest {
        host_id: host.to_string(),
        labels: map,
        services,
        clear,
    };
    let coord = Coordinator::connect(url).await?;
    let resp = coord.pin_host(req).await?;
    emit_as(format, || resp.message.clone(), || json::message(&resp))?;
    Ok(Finish::Success)
}

/// How `host forget` gets its confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirmation {
    /// `--yes` was given.
    Given,
    /// Ask on the terminal.
    Ask,
    /// Nobody to ask (standard input is not a terminal) and no `--yes`.
    Refuse,
}

/// How to confirm a destructive command, given `--yes` and whether stdin is a terminal.
fn confirmation(yes: bool, stdin_is_terminal: bool) -> Confirmation {
    match (yes, stdin_is_terminal) {
        (true, _) => Confirmation::Given,
        (false, true) => Confirmation::Ask,
        (false, false) => Confirmation::Refuse,
    }
}

/// Whether a typed answer means yes.
fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Makes sure the operator means to forget `host`: `--yes`, or "y" at a prompt on a terminal.
fn confirm_forget(host: &str, yes: bool) -> anyhow::Result<()> {
    let stdin = io::stdin();
    match confirmation(yes, stdin.is_terminal()) {
        Confirmation::Given => return Ok(()),
        Confirmation::Refuse => bail!(
            "not forgetting host {host}: forgetting deletes its record and needs confirmation, \
             but standard input is not a terminal to ask on; pass --yes to confirm"
        ),
        Confirmation::Ask => {}
    }
    eprint!(
        "Forget host {host}? Its record is deleted, its outstanding orders become void and it \
         stops counting against rollout budgets. [y/N] "
    );
    io::stderr()
        .flush()
        .context("cannot write to standard error")?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer from standard input")?;
    if !is_yes(&answer) {
        bail!("host {host} not forgotten: not confirmed (answer y to confirm, or pass --yes)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_needs_a_yes() {
        let table = [
            (true, true, Confirmation::Given),
            (true, false, Confirmation::Given),
            (false, true, Confirmation::Ask),
            (false, false, Confirmation::Refuse),
        ];
        for (yes, terminal, want) in table {
            assert_eq!(
                confirmation(yes, terminal),
                want,
                "yes={yes} terminal={terminal}"
            );
        }
        let answers = [
            ("y\n", true),
            ("Yes\n", true),
            ("  YES  ", true),
            ("\n", false),
            ("n\n", false),
            ("yep\n", false),
            ("", false),
        ];
        for (answer, want) in answers {
            assert_eq!(is_yes(answer), want, "{answer:?}");
        }
    }

    #[test]
    fn refusal_without_a_terminal_says_to_pass_yes() {
        // Under `cargo test` stdin may or may not be a terminal; only check the non-terminal
        // message when it is not, so the test never blocks on a prompt.
        if io::stdin().is_terminal() {
            return;
        }
        let err = confirm_forget("h1", false).expect_err("no terminal, no --yes");
        assert!(err.to_string().contains("pass --yes"), "{err}");
        assert!(err.to_string().contains("host h1"), "{err}");
        confirm_forget("h1", true).expect("--yes needs no terminal");
    }
}
