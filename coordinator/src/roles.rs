//! Who may call which control RPC (S10), the deny list, revocation of open streams, and the
//! operator audit line.
//!
//! Roles come from the certificate ([`rollgate_proto::tls::Role`]): `operator` may do
//! everything, `viewer` only reads, `deployer` creates and steers rollouts of its certificate's
//! services and pushes artifacts. [`decide`] is the whole rule, a pure function. Every control
//! RPC passes through [`authorize`], which logs one structured line
//! `operator=URI action=WORD target=...` for what it allows and refuses.
//!
//! Revocation: `[access] deny_list` names a file of denied identities (`spiffe://...`),
//! certificate serials (`serial:HEX`) and fingerprints (`sha256:HEX`), read again when it
//! changes and on SIGHUP. It is checked at every handshake, at every request on a long-lived
//! HTTP/2 connection (with the certificate's expiry and chain against the current CA bundle),
//! and every [`RECHECK_INTERVAL`] on open agent sessions and watches, which are cut (in full
//! when the files or the deny list were read again or the certificate's validity ended, the
//! only things that change the verdict: `tls::ServerTls::generation`).
//! `host forget` bans the forgotten host's current certificate (its fingerprint, recorded
//! in etcd at every session) until it is re-issued.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rollgate_proto::text::printable;
use rollgate_proto::tls::{Identity, Role};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use tracing::{info, warn};

use crate::Ctx;

/// How often open streams (agent sessions, watches) are checked against the deny list, the
/// certificate's expiry and the current CA bundle: a revoked identity is cut within this.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often an open stream's certificate is verified in full even when nothing it depends on
/// was read again (see [`guard`]).
pub const FULL_RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A control RPC, as far as permissions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// GetRollout, ListRollouts, WatchRollout.
    ReadRollouts,
    /// PlanRollout (a dry run; changes nothing).
    Plan,
    /// ListHosts.
    ListHosts,
    /// GetHistory.
    History,
    /// CreateRollout.
    Create,
    /// PauseRollout.
    Pause,
    /// ResumeRollout.
    Resume,
    /// AbortRollout.
    Abort,
    /// PromoteRollout.
    Promote,
    /// RollbackRollout.
    Rollback,
    /// PushArtifact.
    PushArtifact,
    /// FenceHost.
    Fence,
    /// ForgetHost.
    Forget,
    /// PinHost (`rollgate host label`).
    Pin,
}

impl Rpc {
    /// The action word in the audit line.
    pub fn word(self) -> &'static str {
        match self {
            Rpc::ReadRollouts => "read-rollouts",
            Rpc::Plan => "plan",
            Rpc::ListHosts => "list-hosts",
            Rpc::History => "history",
            Rpc::Create => "create",
            Rpc::Pause => "pause",
            Rpc::Resume => "resume",
            Rpc::Abort => "abort",
            Rpc::Promote => "promote",
            Rpc::Rollback => "rollback",
            Rpc::PushArtifact => "push-artifact",
            Rpc::Fence => "fence-host",
            Rpc::Forget => "forget-host",
            Rpc::Pin => "pin-host",
        }
    }

    fn reads_only(self) -> bool {
        matches!(
            self,
            Rpc::ReadRollouts | Rpc::Plan | Rpc::ListHosts | Rpc::History
        )
    }

    /// Acts on one service's rollouts (a deployer's scope applies).
    fn on_a_service(self) -> bool {
        matches!(
            self,
            Rpc::Create | Rpc::Pause | Rpc::Resume | Rpc::Abort | Rpc::Promote | Rpc::Rollback
        )
    }
}

/// What an RPC acts on, for the audit line and a deployer's scope.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The whole fleet (lists, artifacts).
    Fleet,
    /// A rollout by id (empty: the most recent).
    Rollout(&'a str),
    /// A new rollout's spec (TOML).
    Spec(&'a str),
    /// A service's history.
    Service(&'a str),
    /// A host.
    Host(&'a str),
}

/// Why [`decide`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not an operator role at all.
    #[error("the control API is for operator certificates; this is a {0} certificate")]
    NotAnOperator(Role),
    /// A viewer asked to change something.
    #[error("a viewer may only read; {0} needs an operator or deployer certificate")]
    ReadOnly(&'static str),
    /// A deployer asked for something outside rollouts.
    #[error("{0} needs an operator certificate; a deployer creates and steers rollouts only")]
    NotForDeployers(&'static str),
    /// A deployer asked about a service outside its list.
    #[error("this deployer may act on services {allowed:?} only; the rollout is for {service:?}")]
    OtherService {
        /// The rollout's service.
        service: String,
        /// The certificate's services.
        allowed: Vec<String>,
    },
}

/// The rule: may `who` do `rpc` on a rollout of `service` (known for service-scoped RPCs)?
pub fn decide(who: &Identity, rpc: Rpc, service: Option<&str>) -> Result<(), Refusal> {
    match who.role {
        Role::Operator => Ok(()),
        Role::Viewer if rpc.reads_only() => Ok(()),
        Role::Viewer => Err(Refusal::ReadOnly(rpc.word())),
        Role::Deployer if rpc.reads_only() || rpc == Rpc::PushArtifact => Ok(()),
        Role::Deployer if !rpc.on_a_service() => Err(Refusal::NotForDeployers(rpc.word())),
        Role::Deployer => match service {
            Some(s) if who.services.iter().any(|a| a == s) => Ok(()),
            s => Err(Refusal::OtherService {
                service: s.unwrap_or_default().to_string(),
                allowed: who.services.clone(),
            }),
        },
        Role::Coordinator | Role::Host => Err(Refusal::NotAnOperator(who.role)),
    }
}

/// Checks the caller of a control RPC (certificate, deny list, role, a deployer's services)
/// and writes the audit line. `Ok(None)` without TLS (no identities in development mode).
pub async fn authorize<T>(
    ctx: &Arc<Ctx>,
    req: &Request<T>,
    rpc: Rpc,
    target: Target<'_>,
) -> Result<Option<Identity>, Status> {
    let Some(who) = crate::tls::admitted(req, ctx.tls.as_deref())? else {
        return Ok(None);
    };
    let service = match (who.role, rpc.on_a_service()) {
        (Role::Deployer, true) => Some(service_of(ctx, target).await?),
        _ => None,
    };
    let shown = target_words(target);
    match decide(&who, rpc, service.as_deref()) {
        Ok(()) => {
            info!(operator = %who.uri(), action = %rpc.word(), target = %shown, "operator action");
            Ok(Some(who))
        }
        Err(why) => {
            warn!(operator = %who.uri(), action = %rpc.word(), target = %shown, "refused: {why}");
            Err(Status::permission_denied(format!(
                "{why} (you are {}). Ask for a certificate with the role you need: \
                 `rollgate certs issue operator NAME --role operator|deployer --services A,B`",
                who.uri()
            )))
        }
    }
}

/// What an RPC acts on, as the audit line shows it (text from the request escaped).
pub fn target_words(t: Target<'_>) -> String {
    match t {
        Target::Fleet => "fleet".into(),
        Target::Rollout("") => "rollout:latest".into(),
        Target::Rollout(id) => format!("rollout:{}", printable(id)),
        Target::Spec(_) => "new-rollout".into(),
        Target::Service(s) => format!("service:{}", printable(s)),
        Target::Host(h) => format!("host:{}", printable(h)),
    }
}

/// The service a deployer's request is about.
async fn service_of(ctx: &Arc<Ctx>, target: Target<'_>) -> Result<String, Status> {
    match target {
        Target::Rollout(id) => Ok(crate::control::status(ctx, id).await?.service),
        Target::Spec(toml) => rollgate_proto::spec::RolloutSpec::parse(toml)
            .map(|s| s.service)
            .map_err(|e| Status::invalid_argument(e.to_string())),
        Target::Service(s) => Ok(s.to_string()),
        Target::Fleet | Target::Host(_) => Ok(String::new()),
    }
}

/// The hex SHA-256 of a certificate (what `sha256:` entries and host bans name).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The deny list file, loaded; reloaded when it changes (or on SIGHUP).
#[derive(Debug, Default)]
pub struct DenyList {
    path: Option<PathBuf>,
    current: Mutex<Loaded>,
    /// Times the list was read again.
    reloads: AtomicU64,
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<SystemTime>,
    entries: Vec<String>,
}

impl DenyList {
    /// The list in `path` (none: nobody is denied). A missing or unreadable file at start is
    /// an error: a deny list that silently denies nobody is worse than none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let list = DenyList {
            path: path.map(Path::to_path_buf),
            current: Mutex::default(),
            reloads: AtomicU64::new(0),
        };
        if let Some(p) = path {
            let entries = read_entries(p)?;
            info!(path = %p.display(), entries = entries.len(), "deny list loaded");
            *lock(&list.current) = Loaded {
                stamp: stamp(p),
                entries,
            };
        }
        Ok(list)
    }

    /// Reads the file again if it changed (or `force`); keeps the last good list on error.
    pub fn refresh(&self, force: bool) {
        let Some(p) = &self.path else { return };
        let mut cur = lock(&self.current);
        let now = stamp(p);
        if !force && now == cur.stamp {
            return;
        }
        cur.stamp = now;
        self.reloads.fetch_add(1, Ordering::SeqCst);
        match read_entries(p) {
            Ok(entries) => {
                info!(path = %p.display(), entries = entries.len(), "deny list reloaded");
                cur.entries = entries;
            }
            Err(e) => warn!(
                "cannot reload the deny list ({e:#}); still using the {} entries loaded before",
                cur.entries.len()
            ),
        }
    }

    /// Times the list was read again since it was loaded.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::SeqCst)
    }

    /// Why `chain`'s holder is denied, if it is.
    pub fn denies(&self, id: &Identity, leaf: &CertificateDer<'_>) -> Option<String> {
        self.refresh(false);
        let cur = lock(&self.current);
        let uri = id.uri();
        let fp = format!("sha256:{}", fingerprint(leaf));
        let serial = serial_of(leaf).map(|s| format!("serial:{s}"));
        cur.entries
            .iter()
            .find(|e| **e == uri || **e == fp || Some(*e) == serial.as_ref())
            .map(|e| format!("{uri} is on the deny list ({e})"))
    }
}

fn read_entries(p: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| anyhow::anyhow!("cannot read the deny list {}: {e}", p.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let e = line.split('#').next().unwrap_or("").trim();
        if e.is_empty() {
            continue;
        }
        let ok = e.starts_with("spiffe://")
            || e.strip_prefix("serial:").is_some_and(is_hex)
            || e.strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && is_hex(h));
        if !ok {
            anyhow::bail!(
                "deny list {} line {}: {e:?} is not spiffe://FLEET/ROLE/NAME, serial:HEX or \
                 sha256:HEX (64 lowercase hex digits)",
                p.display(),
                n + 1
            );
        }
        out.push(e.to_string());
    }
    Ok(out)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// When the first certificate of `chain` stops being valid (`None`: one cannot be read).
fn valid_until(chain: &[CertificateDer<'static>]) -> Option<SystemTime> {
    chain
        .iter()
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        })
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
}

/// The certificate's serial number, lowercase hex without leading zeros.
fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let hex = hex::encode(cert.raw_serial());
    Some(hex.trim_start_matches('0').to_string())
}

fn stamp(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A token for an open stream of `who` (presenting `chain`), cancelled when `parent` is, or
/// as soon as the identity is denied, its certificate expires or no longer chains to the CA
/// bundle in use (checked every [`RECHECK_INTERVAL`]). Cancel it when the stream ends.
pub fn guard(
    tls: Option<Arc<crate::tls::ServerTls>>,
    who: Option<Identity>,
    chain: Vec<CertificateDer<'static>>,
    parent: &CancellationToken,
    what: &'static str,
) -> CancellationToken {
    let token = parent.child_token();
    let (Some(tls), Some(who)) = (tls, who) else {
        return token;
    };
    let t = token.clone();
    let ends = valid_until(&chain);
    tokio::spawn(async move {
        // None: the first round checks in full (the files may have changed since the handshake).
        let mut seen = None;
        let mut last_full = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = t.cancelled() => return,
                _ = tokio::time::sleep(RECHECK_INTERVAL) => {}
            }
            // The verdict changes with the TLS files, the deny list, or the clock passing the
            // chain's validity: the full check (a signature verification) then, and at least
            // every FULL_RECHECK_INTERVAL for what the chain does not show (the CA's own
            // validity ending).
            let generation = tls.generation();
            let expired = ends.is_none_or(|end| SystemTime::now() >= end);
            if seen == Some(generation) && !expired && last_full.elapsed() < FULL_RECHECK_INTERVAL {
                continue;
            }
            seen = Some(generation);
            last_full = tokio::time::Instant::now();
            if let Err(why) = tls.recheck(&who, &chain) {
                warn!(peer = %who.uri(), "cut the open {what}: {why}");
                t.cancel();
                return;
            }
        }
    });
    token
}

/// etcd key of the fingerprint of the certificate a host last connected with.
fn host_cert_key(ctx: &Ctx, host: &str) -> String {
    format!("{}identity/host-certs/{host}", ctx.config.etcd.prefix)
}

/// etcd key of a forgotten host's banned certificate fingerprint.
fn banned_key(ctx: &Ctx, host: &str) -> String {
    format!("{}identity/banned/{host}", ctx.config.etcd.prefix)
}

/// At a host's session start: refuses a certificate banned by `host forget`, and records the
/// one it presents (so a later forget knows what to ban). One transaction, which writes only
/// when the host presents a certificate other than the one recorded: a fleet reconnecting after
/// a restart costs etcd one read each, no write. `reads` (gets the opening needs anyway) ride
/// in the same transaction, after the check; their answers are returned, in order, when the
/// certificate is admitted.
pub async fn admit_host(
    ctx: &Ctx,
    host: &str,
    leaf: &[u8],
    reads: Vec<etcd_client::TxnOp>,
) -> Result<Vec<etcd_client::TxnOpResponse>, Status> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let fp = fingerprint(leaf);
    let record = Txn::new()
        .when(vec![Compare::value(
            host_cert_key(ctx, host),
            CompareOp::Equal,
            fp.as_bytes(),
        )])
        .or_else(vec![TxnOp::put(
            host_cert_key(ctx, host),
            fp.as_bytes(),
            None,
        )]);
    // A value compare on a missing key fails: no ban (or another certificate's) records it.
    let admitted = std::iter::once(TxnOp::txn(record))
        .chain(reads)
        .collect::<Vec<_>>();
    let txn = Txn::new()
        .when(vec![Compare::value(
            banned_key(ctx, host),
            CompareOp::Equal,
            fp.as_bytes(),
        )])
        .or_else(admitted);
    let banned = ctx.etcd.clone().txn(txn).await.map_err(|e| {
        Status::unavailable(format!(
            "cannot check the host ban list or record the host certificate: {e}"
        ))
    })?;
    if banned.succeeded() {
        warn!(peer = %host, cert = %fp, "refused an agent session: this certificate was banned by `rollgate host forget`");
        return Err(Status::permission_denied(format!(
            "host {host} was forgotten by an operator; its certificate sha256:{fp} is banned. \
             Issue it a new one (`rollgate certs issue host {host}`) to bring it back"
        )));
    }
    // The first answer is the certificate record's.
    Ok(banned.op_responses().into_iter().skip(1).collect())
}

/// After `host forget`: bans the certificate the host last connected with.
pub async fn ban_forgotten(ctx: &Ctx, host: &str, by: Option<&Identity>) -> Result<(), Status> {
    let mut etcd = ctx.etcd.clone();
    let unavailable = |e: etcd_client::Error| {
        Status::unavailable(format!(
            "host {host} was forgotten, but its certificate could not be banned ({e}); run \
             `rollgate host forget {host}` again"
        ))
    };
    let last = etcd
        .get(host_cert_key(ctx, host), None)
        .await
        .map_err(unavailable)?;
    let Some(kv) = last.kvs().first() else {
        return Ok(());
    };
    let fp = kv.value().to_vec();
    etcd.put(banned_key(ctx, host), fp.clone(), None)
        .await
        .map_err(unavailable)?;
    let by = by.map(Identity::uri).unwrap_or_default();
    info!(operator = %by, action = %"ban-host-cert", target = %format!("host:{host}"),
        cert = %String::from_utf8_lossy(&fp), "forgotten host's certificate banned until re-issued");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, services: &[&str]) -> Identity {
        let mut i = Identity::new("prod", role, "alice").expect("valid");
        i.services = services.iter().map(|s| s.to_string()).collect();
        i
    }

    #[test]
    fn roles_decide_by_rpc_and_service() {
        let op = id(Role::Operator, &[]);
        let viewer = id(Role::Viewer, &[]);
        let web = id(Role::Deployer, &["web"]);
        let host = id(Role::Host, &[]);
        // (who, rpc, service, allowed)
        let table = [
            (&op, Rpc::Forget, None, true),
            (&op, Rpc::Create, Some("db"), true),
            (&viewer, Rpc::ReadRollouts, None, true),
            (&viewer, Rpc::Plan, None, true),
            (&viewer, Rpc::History, None, true),
            (&viewer, Rpc::Pause, Some("web"), false),
            (&viewer, Rpc::PushArtifact, None, false),
            (&web, Rpc::Create, Some("web"), true),
            (&web, Rpc::Abort, Some("web"), true),
            (&web, Rpc::Abort, Some("db"), false),
            (&web, Rpc::Create, Some(""), false),
            (&web, Rpc::PushArtifact, None, true),
            (&web, Rpc::ListHosts, None, true),
            (&web, Rpc::Fence, None, false),
            (&web, Rpc::Forget, None, false),
            (&web, Rpc::Pin, None, false),
            (&viewer, Rpc::Pin, None, false),
            (&op, Rpc::Pin, None, true),
            (&host, Rpc::ListHosts, None, false),
        ];
        for (who, rpc, service, want) in table {
            let got = decide(who, rpc, service);
            assert_eq!(
                got.is_ok(),
                want,
                "{} {rpc:?} {service:?}: {got:?}",
                who.role
            );
        }
    }

    #[test]
    fn deny_list_entries_are_checked_and_bad_lines_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("deny");
        std::fs::write(&p, "# revoked\nspiffe://prod/operator/bob\nserial:1a2b\n").expect("w");
        assert_eq!(read_entries(&p).expect("valid").len(), 2);
        std::fs::write(&p, "bob\n").expect("w");
        let e = read_entries(&p).expect_err("bad line").to_string();
        assert!(e.contains("line 1") && e.contains("spiffe://"), "{e}");
    }
}
