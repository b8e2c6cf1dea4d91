//! Server-sent events for the page: `/api/live` (the fleet and the rollout list, refreshed on
//! every coordinator event, plus each event as a line; one shared feed, see [`super::hub`]) and
//! `/api/rollouts/ID/live` (a rollout's status on every change, from WatchRollout; one task
//! per open rollout view). Both end when the page goes away or the dashboard stops.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};

use super::hub::{Message, RECONNECT_DELAY};
use super::{model, Dashboard};
use crate::client::ControlError;

/// Messages queued for a slow rollout view before its task waits.
const QUEUE: usize = 32;

type Feed = mpsc::Sender<Event>;

fn sse(m: Message) -> Result<Event, Infallible> {
    Ok(Event::default().event(m.name).data(m.data))
}

/// Resolves when the dashboard starts stopping.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// `GET /api/live`: the latest fleet and rollout list at once, then every message of the hub.
/// A page that falls behind skips what it missed (the next snapshot has it).
pub(super) async fn fleet_stream(
    State(d): State<Dashboard>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (first, rx) = d.hub.subscribe();
    let later = BroadcastStream::new(rx).filter_map(|m| async move { m.ok() });
    let stream = futures::stream::iter(first)
        .chain(later)
        .map(sse)
        .take_until(stopped(d.shutdown.clone()));
    Sse::new(stream).keep_alive(KeepAlive::default())
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
async fn send(tx: &Feed, name: &'static str, body: &Value) -> bool {
    tx.send(Event::default().event(name).data(body.to_string()))
        .await
        .is_ok()
}

/// Tells the page something is wrong with the coordinator; the dashboard keeps trying.
async fn problem(tx: &Feed, what: String) -> bool {
    let m = Message::problem(what);
    tx.send(Event::default().event(m.name).data(m.data))
        .await
        .is_ok()
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

/// Whether the feed should stop: the page went away or the dashboard is stopping.
fn over(d: &Dashboard, tx: &Feed) -> bool {
    tx.is_closed() || *d.shutdown.borrow()
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
