//! `rollgate events`: the event log, one line per event (or one JSON object per line), oldest
//! first; with `--follow`, new events as they happen. A broken stream (a coordinator restart or
//! failover) is resumed after the last event printed, so nothing is lost or shown twice.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail};
use rollgate_proto::pb::{Event, EventKind, EventsRequest};
use rollgate_proto::text::printable;

use crate::args::OutputFormat;
use crate::client::{Coordinator, Target};
use crate::commands::Finish;
use crate::watch::{WATCH_MAX_RECONNECTS, WATCH_RECONNECT_DELAY};

/// What to show: the filters and where to start.
#[derive(Debug, Clone, Default)]
pub struct Query {
    req: EventsRequest,
}

impl Query {
    /// From the command line; `since` is an event id, a time or a time ago.
    pub fn new(
        rollout: Option<String>,
        service: Option<String>,
        host: Option<String>,
        since: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut req = EventsRequest {
            rollout_id: rollout.unwrap_or_default(),
            service: service.unwrap_or_default(),
            host_id: host.unwrap_or_default(),
            ..EventsRequest::default()
        };
        match since.map(str::trim) {
            None | Some("") => {}
            Some(text) => match text.parse::<u64>() {
                Ok(id) => req.after_id = id.saturating_sub(1),
                Err(_) => req.since_ms = since_ms(text, SystemTime::now())?,
            },
        }
        Ok(Query { req })
    }
}

/// `--since` as a time (`2026-12-07T03:12:00Z`) or a time ago (`10m`), in ms since the epoch.
fn since_ms(text: &str, now: SystemTime) -> anyhow::Result<i64> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(text).map_err(|_| {
                anyhow!(
                    "--since {text:?} is neither an event id (42), a time \
                     (2026-12-07T03:12:00Z) nor a time ago (10m)"
                )
            })?;
            now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    };
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Prints the events; with `follow`, keeps going (resuming after reconnects) until interrupted.
pub async fn show(
    url: &Target,
    format: OutputFormat,
    query: Query,
    follow: bool,
) -> anyhow::Result<Finish> {
    let mut req = query.req;
    req.follow = follow;
    let mut attempts = 0u32;
    loop {
        let why = match stream_once(url, format, &mut req, &mut attempts).await {
            Ok(()) if !follow => return Ok(Finish::Success),
            Ok(()) => "the coordinator closed the stream".to_string(),
            Err(e) => e.to_string(),
        };
        attempts += 1;
        if attempts > WATCH_MAX_RECONNECTS {
            bail!(
                "lost the event stream after {WATCH_MAX_RECONNECTS} attempts to reconnect: {why}"
            );
        }
        eprintln!(
            "rollgate: event stream interrupted ({}); resuming after event {} in {} s",
            printable(&why),
            req.after_id,
            WATCH_RECONNECT_DELAY.as_secs()
        );
        tokio::time::sleep(WATCH_RECONNECT_DELAY).await;
    }
}

/// One stream: prints each event and moves `req.after_id` past it.
async fn stream_once(
    url: &Target,
    format: OutputFormat,
    req: &mut EventsRequest,
    attempts: &mut u32,
) -> anyhow::Result<()> {
    let coord = Coordinator::connect(url).await?;
    let mut stream = coord.events(req.clone()).await?;
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(status) => return Err(coord.stream_error("read the event log", &status).into()),
        };
        *attempts = 0;
        req.after_id = event.id;
        let line = match format {
            OutputFormat::Text => line(&event),
            OutputFormat::Json => crate::json::message(&event).to_string(),
        };
        let mut out = io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush())?;
    }
}

/// One event as a line: time, id, what, to what, by whom, why.
pub fn line(e: &Event) -> String {
    let secs = e.at_ms.div_euclid(1000);
    let time = rollgate_proto::signing::rfc3339(secs);
    let mut subject = Vec::new();
    if !e.rollout_id.is_empty() {
        subject.push(e.rollout_id.clone());
    }
    if !e.service.is_empty() {
        subject.push(format!("({})", e.service));
    }
    if !e.host_id.is_empty() {
        subject.push(format!("host {}", e.host_id));
    }
    let mut text = format!(
        "{time}  #{:<5} {:<20} {}",
        e.id,
        e.kind().word(),
        subject.join(" ")
    );
    let detail = detail(e);
    if !detail.is_empty() {
        text.push_str(": ");
        text.push_str(&detail);
    }
    if !e.by.is_empty() {
        text.push_str(&format!(" [by {}]", e.by));
    }
    printable(&text).into_owned()
}

fn detail(e: &Event) -> String {
    match e.kind() {
        EventKind::HostGranted => format!("token {}", e.token),
        // The agent's message usually starts with the step ("fetching 3.0.0 …").
        EventKind::HostStep if e.reason.starts_with(e.step().word()) => e.reason.clone(),
        EventKind::HostStep if e.reason.is_empty() => e.step().word().to_string(),
        EventKind::HostStep => format!("{}: {}", e.step().word(), e.reason),
        EventKind::WaveOpened => format!("wave {}", e.wave),
        EventKind::GateWaiting => format!("wave {} done; {}", e.wave, e.reason),
        _ => e.reason.clone(),
    }
}
