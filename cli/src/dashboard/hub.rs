//! One feed of the fleet for every open page: a single task follows the coordinator's event
//! stream and reads the fleet and the rollout list again after events (and every
//! [`FLEET_REFRESH`] while a page is open), then fans the messages out. Ten open pages cost the
//! coordinator what one does (each read is an audited control call).

use std::collections::VecDeque;
use std::time::Duration;

use rollgate_proto::pb::EventsRequest;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio::time::{sleep, Instant};

use super::model;
use crate::client::Coordinator;

/// How often the fleet is read again without an event while a page is open: a host connecting
/// or going offline is not an event in the log.
pub const FLEET_REFRESH: Duration = Duration::from_secs(3);
/// Events closer together than this share one refresh (a rollout sends bursts of steps).
pub const EVENT_COALESCE: Duration = Duration::from_millis(200);
/// Wait before opening a broken coordinator stream again.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Messages kept for a slow page; one that falls further behind skips to the next snapshot.
const BACKLOG: usize = 64;
/// Events a page opened now is shown first (the page keeps as many).
pub const RECENT_EVENTS: usize = 50;
/// How far back the event panel starts when the dashboard starts.
pub const RECENT_WINDOW: Duration = Duration::from_secs(10 * 60);

/// One server-sent event: its name (`fleet`, `rollouts`, `event`, `problem`) and JSON body.
#[derive(Debug, Clone)]
pub struct Message {
    /// The SSE event name the page listens for.
    pub name: &'static str,
    /// Its data, as JSON text.
    pub data: String,
}

impl Message {
    fn new(name: &'static str, body: &Value) -> Self {
        Message {
            name,
            data: body.to_string(),
        }
    }

    /// Something is wrong with the coordinator; the dashboard keeps trying.
    pub fn problem(what: String) -> Self {
        Message::new("problem", &json!({ "error": what, "retrying": true }))
    }
}

/// The pages' side of the feed.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Every message as it is made.
    tx: broadcast::Sender<Message>,
    /// What a page opened now needs first.
    latest: watch::Receiver<Latest>,
}

/// The last of each kind of message, for a page opened now.
#[derive(Debug, Clone, Default)]
struct Latest {
    fleet: Option<Message>,
    rollouts: Option<Message>,
    /// Set while the coordinator cannot be read; cleared by the next snapshot.
    problem: Option<Message>,
    /// The last [`RECENT_EVENTS`] event lines, oldest first.
    events: VecDeque<Message>,
}

impl Latest {
    fn messages(&self) -> Vec<Message> {
        let mut all: Vec<Message> = self.events.iter().cloned().collect();
        all.extend(
            [&self.fleet, &self.rollouts, &self.problem]
                .into_iter()
                .flatten()
                .cloned(),
        );
        all
    }
}

impl Hub {
    /// Starts the feed's task; it ends when `shutdown` turns true.
    pub fn start(coord: Coordinator, shutdown: watch::Receiver<bool>) -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        let (latest_tx, latest) = watch::channel(Latest::default());
        let feed = Feed {
            coord,
            tx: tx.clone(),
            latest: latest_tx,
            shutdown,
        };
        tokio::spawn(feed.run());
        Hub { tx, latest }
    }

    /// The messages to send a page first, and the receiver of the ones after.
    pub fn subscribe(&self) -> (Vec<Message>, broadcast::Receiver<Message>) {
        let rx = self.tx.subscribe();
        (self.latest.borrow().messages(), rx)
    }
}

/// The upstream task's state.
struct Feed {
    coord: Coordinator,
    tx: broadcast::Sender<Message>,
    latest: watch::Sender<Latest>,
    shutdown: watch::Receiver<bool>,
}

impl Feed {
    /// Sends to every open page (none open is fine).
    fn publish(&self, m: Message) {
        let _ = self.tx.send(m);
    }

    fn problem(&self, what: String) {
        let m = Message::problem(what);
        self.latest.send_modify(|l| l.problem = Some(m.clone()));
        self.publish(m);
    }

    /// Reads the fleet and the rollout list and publishes both.
    async fn snapshot(&self) {
        let fleet = match self.coord.list_hosts().await {
            Ok(r) => Message::new("fleet", &model::fleet(&r.hosts)),
            Err(e) => return self.problem(e.to_string()),
        };
        let rollouts = match self.coord.list_rollouts().await {
            Ok(r) => Message::new("rollouts", &model::rollouts(&r.rollouts)),
            Err(e) => return self.problem(e.to_string()),
        };
        self.latest.send_modify(|l| {
            l.fleet = Some(fleet.clone());
            l.rollouts = Some(rollouts.clone());
            l.problem = None;
        });
        self.publish(fleet);
        self.publish(rollouts);
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn run(mut self) {
        let mut req = EventsRequest {
            follow: true,
            since_ms: crate::commands::now_ms()
                .saturating_sub(i64::try_from(RECENT_WINDOW.as_millis()).unwrap_or(0)),
            ..EventsRequest::default()
        };
        while !self.stopping() {
            self.snapshot().await;
            match self.coord.events(req.clone()).await {
                Ok(stream) => self.follow(stream, &mut req).await,
                Err(e) => self.problem(e.to_string()),
            }
            if !self.stopping() {
                sleep(RECONNECT_DELAY).await;
            }
        }
    }

    /// Follows one event stream until it breaks or the dashboard stops; `req.after_id` moves
    /// past each event, so the next stream resumes after it.
    async fn follow(
        &mut self,
        mut stream: tonic::Streaming<rollgate_proto::pb::Event>,
        req: &mut EventsRequest,
    ) {
        let mut next_fleet = Instant::now() + FLEET_REFRESH;
        let mut dirty_since: Option<Instant> = None;
        loop {
            let refresh_at =
                dirty_since.map_or(next_fleet, |t| (t + EVENT_COALESCE).min(next_fleet));
            tokio::select! {
                _ = self.shutdown.changed() => return,
                () = tokio::time::sleep_until(refresh_at) => {
                    // Without a page open only events trigger reads.
                    if dirty_since.is_some() || self.tx.receiver_count() > 0 {
                        self.snapshot().await;
                    }
                    dirty_since = None;
                    next_fleet = Instant::now() + FLEET_REFRESH;
                }
                msg = stream.message() => match msg {
                    Ok(Some(event)) => {
                        req.after_id = event.id;
                        let line = json!({
                            "id": event.id,
                            "line": crate::events::line(&event),
                        });
                        let m = Message::new("event", &line);
                        self.latest.send_modify(|l| {
                            l.events.push_back(m.clone());
                            if l.events.len() > RECENT_EVENTS {
                                l.events.pop_front();
                            }
                        });
                        self.publish(m);
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let e = self.coord.stream_error("read the event log", &status);
                        return self.problem(e.to_string());
                    }
                },
            }
        }
    }
}
