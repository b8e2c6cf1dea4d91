//! Server-sent events for the page: `/api/live` (the fleet and the rollout list, refreshed on
//! every coordinator event, plus each event as a line) and `/api/rollouts/ID/live` (a rollout's
//! status on every change, from WatchRollout). One task per open page, ended when the page goes
//! away or the dashboard stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use rollgate_proto::pb::EventsRequest;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};
use tokio_stream::wrappers::ReceiverStream;

use super::{model, Dashboard};
use crate::client::ControlError;

/// How often the fleet is read again without an event: a host connecting or going offline is
/// not an event in the log.
pub const FLEET_REFRESH: Duration = Duration::from_secs(3);
/// Events closer together than this share one refresh (a rollout sends bursts of steps).
pub const EVENT_COALESCE: Duration = Duration::from_millis(200);
/// Wait before opening a broken coordinator stream again.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Messages queued for a slow page before its task waits.
const QUEUE: usize = 32;

type Feed = mpsc::Sender<Event>;

/// `GET /api/live`.
pub(super) async fn fleet_stream(
    State(d): State<Dashboard>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(feed_fleet(d, tx));
    Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::default())
}

/// `GET /api/rollouts/ID/live`.
pub(super) async fn rollout_stream(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(feed_rollout(d, id, tx));
    Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::default())
}

/// Sends one named event with a JSON body; false once the page is gone.
async fn send(tx: &Feed, name: &str, body: &Value) -> bool {
    tx.send(Event::default().event(name).data(body.to_string()))
        .await
        .is_ok()
}

/// Tells the page something is wrong with the coordinator (it shows the message) and that the
/// dashboard keeps trying.
async fn problem(tx: &Feed, what: String) -> bool {
    send(
        tx,
        "problem",
        &serde_json::json!({ "error": what, "retrying": true }),
    )
    .await
}

/// Tells the page the coordinator refused (asking again will not help).
async fn refusal(tx: &Feed, what: String) -> bool {
    send(
        tx,
        "problem",
        &serde_json::json!({ "error": what, "retrying": false }),
    )
    .await
}

/// Reads the fleet and the rollout list and sends both.
async fn snapshot(d: &Dashboard, tx: &Feed) -> bool {
    let fleet = match d.coord.list_hosts().await {
        Ok(r) => model::fleet(&r.hosts),
        Err(e) => return problem(tx, e.to_string()).await,
    };
    let rollouts = match d.coord.list_rollouts().await {
        Ok(r) => model::rollouts(&r.rollouts),
        Err(e) => return problem(tx, e.to_string()).await,
    };
    send(tx, "fleet", &fleet).await && send(tx, "rollouts", &rollouts).await
}

/// Whether the feed should stop: the page went away or the dashboard is stopping.
fn over(d: &Dashboard, tx: &Feed) -> bool {
    tx.is_closed() || *d.shutdown.borrow()
}

async fn feed_fleet(mut d: Dashboard, tx: Feed) {
    let since_ms = crate::commands::now_ms();
    let mut req = EventsRequest {
        follow: true,
        since_ms,
        ..EventsRequest::default()
    };
    while !over(&d, &tx) {
        if !snapshot(&d, &tx).await {
            return;
        }
        let mut stream = match d.coord.events(req.clone()).await {
            Ok(s) => s,
            Err(e) => {
                let _ = problem(&tx, e.to_string()).await;
                sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let mut next_fleet = Instant::now() + FLEET_REFRESH;
        let mut dirty_since: Option<Instant> = None;
        loop {
            let refresh_at =
                dirty_since.map_or(next_fleet, |t| (t + EVENT_COALESCE).min(next_fleet));
            tokio::select! {
                () = tx.closed() => return,
                _ = d.shutdown.changed() => return,
                () = tokio::time::sleep_until(refresh_at) => {
                    if !snapshot(&d, &tx).await {
                        return;
                    }
                    dirty_since = None;
                    next_fleet = Instant::now() + FLEET_REFRESH;
                }
                msg = stream.message() => match msg {
                    Ok(Some(event)) => {
                        req.after_id = event.id;
                        let line = serde_json::json!({
                            "id": event.id,
                            "line": crate::events::line(&event),
                        });
                        if !send(&tx, "event", &line).await {
                            return;
                        }
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let e = d.coord.stream_error("read the event log", &status);
                        let _ = problem(&tx, e.to_string()).await;
                        sleep(RECONNECT_DELAY).await;
                        break;
                    }
                },
            }
        }
    }
}

async fn feed_rollout(mut d: Dashboard, id: String, tx: Feed) {
    while !over(&d, &tx) {
        let mut stream = match d.coord.watch_rollout(&id).await {
            Ok(s) => s,
            // The coordinator answered (no such rollout, not allowed): asking again will not
            // change that.
            Err(e @ ControlError::Refused { .. }) => {
                let _ = refusal(&tx, e.to_string()).await;
                let _ = send(&tx, "end", &Value::Null).await;
                return;
            }
            Err(e) => {
                let _ = problem(&tx, e.to_string()).await;
                sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = d.shutdown.changed() => return,
                msg = stream.message() => match msg {
                    Ok(Some(s)) => {
                        if !send(&tx, "rollout", &model::rollout(&s)).await {
                            return;
                        }
                        if s.ends_watch() {
                            let _ = send(&tx, "end", &Value::Null).await;
                            return;
                        }
                    }
                    Ok(None) => {
                        // The watch ends with the rollout: send its final word.
                        if let Ok(s) = d.coord.get_rollout(&id).await {
                            let _ = send(&tx, "rollout", &model::rollout(&s)).await;
                        }
                        let _ = send(&tx, "end", &Value::Null).await;
                        return;
                    }
                    Err(status) => {
                        let e = d.coord.watch_error(&id, &status);
                        let _ = problem(&tx, e.to_string()).await;
                        sleep(RECONNECT_DELAY).await;
                        break;
                    }
                },
            }
        }
    }
}
