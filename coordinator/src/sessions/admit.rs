//! What a host's messages become before anything reaches etcd (S7, S9), as pure functions the
//! session carries out: the checks of a hello (a valid host id, the one its certificate
//! names, a protocol this coordinator serves), the bounded host record it opens, and how a
//! status, a progress report and an order result change what is stored. The fuzz targets call
//! these with hostile messages.

use std::collections::BTreeMap;

use rollgate_proto::names::{self, RolloutId};
use rollgate_proto::pb;
use rollgate_proto::text::printable;
use rollgate_proto::tls::Identity;
use rollgate_proto::version::{agent_too_old, compat, Compat, MIN_AGENT_PROTOCOL};

use super::limits::{self, bounded, Trimmed, MAX_DETAIL, MAX_VERSION};
use super::results::{host_state_after, result_reason};
use crate::store::{HostRecord, HostState, HostStep, ServiceState};

/// Why a hello is refused: the session ends before anything is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloRefusal {
    /// The host id is not a valid name (it would become an etcd key).
    HostId(String),
    /// The certificate names another host than the hello claims.
    NotItsCertificate {
        /// The host the certificate is for.
        certificate: String,
        /// The host the hello claims.
        claimed: String,
    },
    /// The agent speaks a protocol older than this coordinator serves (the whole text).
    TooOld(String),
}

impl HelloRefusal {
    /// What the agent is told (it logs it and retries).
    pub fn to_agent(&self) -> String {
        match self {
            HelloRefusal::HostId(why) | HelloRefusal::TooOld(why) => why.clone(),
            HelloRefusal::NotItsCertificate {
                certificate,
                claimed,
            } => format!(
                "your certificate is for host {certificate:?} but your hello says host_id = \
                 {claimed:?}; set host_id = {certificate:?} in the agent config, or install this \
                 host's own certificate (rollgate certs issue host {claimed})"
            ),
        }
    }
}

/// Checks a session's hello: the host id (grammar), that the certificate (`peer`, `None`
/// without TLS) is for that host, and the agent's protocol.
pub fn check_hello(hello: &pb::Hello, peer: Option<&Identity>) -> Result<(), HelloRefusal> {
    if let Err(e) = names::check("host id", &hello.host_id) {
        return Err(HelloRefusal::HostId(e.to_string()));
    }
    // S7: the certificate says who this is; the hello may only agree.
    if let Some(peer) = peer {
        if peer.name != hello.host_id {
            return Err(HelloRefusal::NotItsCertificate {
                certificate: peer.name.clone(),
                claimed: hello.host_id.clone(),
            });
        }
    }
    if compat(hello.protocol_version, MIN_AGENT_PROTOCOL) == Compat::TooOld {
        let why = agent_too_old(hello.protocol_version, &printable(&hello.agent_version));
        return Err(HelloRefusal::TooOld(why));
    }
    Ok(())
}

/// The host record a hello opens (S9: every field within its bounds, names checked), and
/// what was dropped or cut from it. `now_ms` stamps it.
pub fn host_record(host: &str, hello: &pb::Hello, now_ms: i64) -> (HostRecord, Trimmed) {
    let mut trimmed = Trimmed::default();
    let mut services: BTreeMap<String, ServiceState> = BTreeMap::new();
    for s in &hello.services {
        if limits::service_fits(&s.service, &services, &mut trimmed) {
            let s = limits::status(s, &mut trimmed);
            services.insert(s.service.clone(), ServiceState::from(&s));
        }
    }
    let labels = limits::labels(&hello.labels, &mut trimmed);
    let mut agent_version = hello.agent_version.clone();
    limits::cut(
        &mut agent_version,
        MAX_VERSION,
        "agent version",
        &mut trimmed,
    );
    // An order in flight is evidence the service is out of service (S2), whatever health
    // an agent that does not stamp its statuses reports.
    if let Some(p) = &hello.in_flight {
        if let Some(s) = services.get_mut(&p.service) {
            if s.in_flight_token == 0 {
                s.in_flight_token = p.token;
                // Stored, so only a rollout id (the token alone marks it out of service).
                if RolloutId::parse(&p.rollout_id).is_ok() {
                    s.in_flight_rollout = p.rollout_id.clone();
                }
            }
        }
    }
    // A new session is what clears an operator's fence.
    let record = HostRecord {
        host_id: host.to_string(),
        labels,
        agent_version,
        services,
        last_seen_ms: now_ms,
        fenced: false,
        fenced_by: None,
    };
    (record, trimmed)
}

/// What a service status does to the host record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// Not recorded: an invalid service name, or no room for another service (`trimmed` says).
    Dropped,
    /// Not recorded: an older observation than the one stored (`newest_ms`).
    Older {
        /// When the stored state was observed.
        newest_ms: i64,
    },
    /// The service's new state, within bounds.
    Record(ServiceState),
}

/// How status `s` changes `services` (a host record's); what was cut goes to `trimmed`.
pub fn status_change(
    services: &BTreeMap<String, ServiceState>,
    s: &pb::ServiceStatus,
    trimmed: &mut Trimmed,
) -> StatusChange {
    if !limits::service_fits(&s.service, services, trimmed) {
        return StatusChange::Dropped;
    }
    let state = ServiceState::from(&limits::status(s, trimmed));
    match services.get(&s.service) {
        Some(prev) if !prev.superseded_by(state.observed_at_ms) => StatusChange::Older {
            newest_ms: prev.observed_at_ms,
        },
        _ => StatusChange::Record(state),
    }
}

/// The host's step after progress report `p`, or `None` when it changes nothing: only the
/// grant the host holds (updating, same token) takes progress.
pub fn progressed(step: &HostStep, p: &pb::OrderProgress, now_ms: i64) -> Option<HostStep> {
    if step.state != HostState::Updating || step.token != p.token {
        return None;
    }
    let mut next = step.clone();
    next.step = p.step().into();
    next.message = bounded(&p.message, MAX_DETAIL);
    next.updated_at_ms = now_ms;
    Some(next)
}

/// Where an order result leaves a host (before a stale token's counter check, which needs
/// etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The host's new state in the rollout.
    pub state: HostState,
    /// Its count of interrupted grants.
    pub interruptions: u32,
    /// Why, within [`MAX_DETAIL`].
    pub reason: String,
    /// The version it runs now, within [`MAX_VERSION`].
    pub running_version: String,
}

/// What result `r` settles for a host whose step is `step`, or `None` when it is stale or
/// repeated: only the grant the host holds (updating, same token) is settled, once.
pub fn settle(step: &HostStep, r: &pb::OrderResult) -> Option<Settled> {
    if step.state != HostState::Updating || step.token != r.token {
        return None;
    }
    let (state, interruptions) = host_state_after(r.outcome(), step.interruptions);
    Some(Settled {
        state,
        interruptions,
        reason: bounded(&result_reason(state, interruptions, &r.reason), MAX_DETAIL),
        running_version: bounded(&r.running_version, MAX_VERSION),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_proto::tls::Role;

    fn hello(host: &str, protocol: u32) -> pb::Hello {
        pb::Hello {
            host_id: host.into(),
            protocol_version: protocol,
            ..Default::default()
        }
    }

    #[test]
    fn hellos_are_checked_against_the_certificate_and_the_protocol() {
        let cert = Identity::new("prod", Role::Host, "web-1").expect("identity");
        let current = rollgate_proto::version::PROTOCOL_VERSION;
        // (host id, certificate, protocol, refused because)
        let table: [(&str, Option<&Identity>, u32, Option<&str>); 5] = [
            ("web-1", Some(&cert), current, None),
            ("web-2", None, current, None),
            (
                "web-2",
                Some(&cert),
                current,
                Some("your certificate is for host \"web-1\""),
            ),
            ("../x", Some(&cert), current, Some("host id")),
            ("web-1", Some(&cert), 0, None),
        ];
        for (host, peer, protocol, refused) in table {
            let got = check_hello(&hello(host, protocol), peer).map_err(|e| e.to_agent());
            match refused {
                None => assert_eq!(got, Ok(()), "{host}"),
                Some(why) => {
                    let text = got.expect_err(host);
                    assert!(text.contains(why), "{host}: {text}");
                }
            }
        }
    }

    #[test]
    fn only_the_held_grant_moves_and_a_result_settles_it_once() {
        let step = HostStep {
            state: HostState::Updating,
            token: 7,
            ..HostStep::pending()
        };
        let p = |token| pb::OrderProgress {
            token,
            message: "m".repeat(5000),
            ..Default::default()
        };
        assert!(progressed(&step, &p(6), 1).is_none());
        let moved = progressed(&step, &p(7), 1).expect("the held grant");
        assert!(moved.message.len() <= MAX_DETAIL);
        let r = pb::OrderResult {
            token: 7,
            outcome: pb::Outcome::Succeeded as i32,
            running_version: "v".repeat(500),
            ..Default::default()
        };
        let settled = settle(&step, &r).expect("the held grant");
        assert_eq!(settled.state, HostState::Done);
        assert!(settled.running_version.len() <= MAX_VERSION);
        let done = HostStep {
            state: settled.state,
            ..step
        };
        assert!(settle(&done, &r).is_none(), "a repeated result");
    }
}
