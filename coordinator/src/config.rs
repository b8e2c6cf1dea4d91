//! The coordinator's TOML config, with defaults that make one machine work out of the box.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Default gRPC listen address for agents and operators.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Default client port of the local etcd the coordinator starts when no endpoints are set.
pub const DEFAULT_LOCAL_ETCD_PORT: u16 = 23790;

/// Everything the coordinator reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server (agents, operators, health) listens on.
    pub listen: SocketAddr,
    /// URL other replicas reach this one at (to copy artifacts pushed here); default
    /// `http://<listen>`.
    pub advertise: String,
    /// Where the artifact store (and the local etcd, when used) live.
    pub state_dir: PathBuf,
    /// Name of this replica in logs and session records; default `<hostname>-<pid>`.
    pub replica_id: String,
    /// Largest artifact `rollgate artifact push` accepts.
    pub max_artifact_bytes: u64,
    /// etcd connection.
    pub etcd: EtcdConfig,
    /// How agents' sessions are kept.
    pub agents: AgentsConfig,
    /// `[tls]`: mTLS for agents and operators (ca, cert, key), or `insecure_plaintext = true`
    /// on a development machine.
    pub tls: rollgate_proto::tls::TlsConfig,
    /// `[access]`: revoked identities and certificates.
    pub access: AccessConfig,
    /// How many of a service's latest rollouts `rollgate rollout rollback` may roll back
    /// (1: only the latest; agents have their own `rollback_window` too).
    pub rollback_window: u32,
    /// Copies of artifacts from other replicas running at once (others wait).
    pub max_artifact_copies: u32,
    /// Bytes this replica's artifact store may hold; a push or copy past it is refused.
    pub max_artifact_store_bytes: u64,
    /// `[metrics]`: where to serve Prometheus metrics (off by default).
    pub metrics: rollgate_proto::metrics::MetricsConfig,
    /// `[events]`: how much of the event log etcd keeps.
    pub events: EventsConfig,
    /// `[[notify]]`: webhooks that receive events.
    pub notify: Vec<crate::notify::NotifyConfig>,
}

/// `[events]`: retention of the event log (whichever limit is reached first).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Newest events kept.
    pub max_count: u64,
    /// Events older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_count: 100_000,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// `[access]`: who is refused although the fleet CA signed their certificate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// A file of denied identities (`spiffe://FLEET/ROLE/NAME`), certificate serials
    /// (`serial:HEX`) and fingerprints (`sha256:HEX`), one per line, `#` comments. Read again
    /// when it changes and on SIGHUP; open sessions of a denied peer are cut within seconds.
    pub deny_list: Option<PathBuf>,
}

/// etcd connection and the local single-member etcd.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Endpoints of an etcd cluster. Empty: start and supervise a local single-member etcd under
    /// `state_dir/etcd`.
    pub endpoints: Vec<String>,
    /// etcd binary for the local etcd (looked up in PATH when not absolute).
    pub binary: PathBuf,
    /// Client port of the local etcd (its peer port is the next one).
    pub local_port: u16,
    /// Key prefix under which all of rollgate's state lives.
    pub prefix: String,
    /// TTL of this replica's lease: liveness of its agent sessions and its leadership. A replica
    /// that stops for longer loses both; a shorter TTL hands over faster.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// `[etcd.tls]`: TLS to the endpoints (needed for `https://` endpoints), with an optional
    /// client certificate for etcd's `--client-cert-auth`.
    pub tls: Option<EtcdTlsConfig>,
    /// `[etcd.auth]`: the etcd user this coordinator authenticates as, when etcd has auth
    /// enabled.
    pub auth: Option<EtcdAuthConfig>,
    /// Accept external `endpoints` without TLS (`https://` and `[etcd.tls] ca`) or without
    /// authentication (a client certificate or `[etcd.auth]`). Anyone who can reach such an
    /// etcd can grant slots and change every rollout: development only.
    pub allow_insecure_etcd: bool,
}

/// `[etcd.tls]`: PEM files for TLS to etcd.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// CA certificate(s) that signed etcd's server certificate (etcd's `--cert-file`).
    pub ca: Option<PathBuf>,
    /// Client certificate chain presented to etcd (for `--client-cert-auth`); with `key`.
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
}

/// `[etcd.auth]`: etcd user and password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdAuthConfig {
    /// etcd user name; it needs a role with readwrite on `etcd.prefix`.
    pub username: String,
    /// File holding the password (one trailing newline is ignored). Kept out of the config so
    /// the config can be world-readable; the file itself must not be.
    pub password_file: PathBuf,
}

/// Agent session settings, sent to every agent in `Welcome` (the heartbeat), and how many
/// sessions this replica opens at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// How often agents send a heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How many heartbeats in a row an agent may miss before its session is dropped and the host
    /// counts as offline.
    pub missed_heartbeats: u32,
    /// `[agents.opening]`: turns at opening a session (a reconnect storm).
    pub opening: OpeningConfig,
}

/// `[agents.opening]`: how many sessions do their opening etcd work at once, and how long a
/// new session waits for a turn before it is refused (the agent retries after its backoff).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpeningConfig {
    /// Sessions opening at once.
    pub turns: usize,
    /// How long a session waits for a turn.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
}

impl Default for OpeningConfig {
    fn default() -> Self {
        OpeningConfig {
            turns: crate::sessions::opening::MAX_OPENING,
            wait: crate::sessions::opening::OPENING_WAIT,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            advertise: String::new(),
            state_dir: PathBuf::from("/var/lib/rollgate-coordinator"),
            replica_id: String::new(),
            max_artifact_bytes: 1 << 30,
            etcd: EtcdConfig::default(),
            agents: AgentsConfig::default(),
            tls: rollgate_proto::tls::TlsConfig::default(),
            access: AccessConfig::default(),
            rollback_window: 1,
            max_artifact_copies: 2,
            max_artifact_store_bytes: 16 << 30,
            metrics: rollgate_proto::metrics::MetricsConfig::default(),
            events: EventsConfig::default(),
            notify: Vec::new(),
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            binary: PathBuf::from("etcd"),
            local_port: DEFAULT_LOCAL_ETCD_PORT,
            prefix: "/rollgate/".to_string(),
            lease_ttl: Duration::from_secs(5),
            tls: None,
            auth: None,
            allow_insecure_etcd: false,
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 3,
            opening: OpeningConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read coordinator config {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("coordinator config {} is not valid", path.display()))?;
        config.finish()?;
        Ok(config)
    }

    /// Fills derived defaults and checks values; used by `load` and by tests that build configs.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        if self.replica_id.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "coordinator".to_string());
            self.replica_id = format!("{host}-{}", std::process::id());
        }
        if self.advertise.is_empty() {
            let scheme = if self.tls.insecure() { "http" } else { "https" };
            self.advertise = format!("{scheme}://{}", self.listen);
        }
        if self.tls.insecure() && !self.listen.ip().is_loopback() {
            bail!(
                "[tls] insecure_plaintext = true is refused on listen = {}: without TLS anyone \
                 who can reach that address can run releases on every host. Plaintext is for a \
                 development machine and only on a loopback address (listen = \"127.0.0.1:{}\"); \
                 otherwise set [tls] ca, cert and key",
                self.listen,
                self.listen.port()
            );
        }
        if !self.etcd.prefix.starts_with('/') || !self.etcd.prefix.ends_with('/') {
            bail!(
                "etcd.prefix {:?} must start and end with '/', e.g. \"/rollgate/\"",
                self.etcd.prefix
            );
        }
        if self.etcd.lease_ttl < Duration::from_secs(1) {
            bail!("etcd.lease_ttl must be at least 1s (etcd leases count whole seconds)");
        }
        self.etcd.check_access()?;
        if self.agents.heartbeat_interval.is_zero() || self.agents.missed_heartbeats == 0 {
            bail!("agents.heartbeat_interval and agents.missed_heartbeats must be above zero");
        }
        if self.agents.opening.turns == 0 {
            bail!(
                "agents.opening.turns must be at least 1 (with none, every agent session would \
                 be refused); the default is {}",
                crate::sessions::opening::MAX_OPENING
            );
        }
        for hook in &self.notify {
            hook.validate()?;
            if self.notify.iter().filter(|h| h.name == hook.name).count() > 1 {
                bail!(
                    "[[notify]] name {:?} is used twice; each webhook needs its own",
                    hook.name
                );
            }
        }
        Ok(())
    }

    /// How long an agent may stay silent before its session is dropped.
    pub fn session_timeout(&self) -> Duration {
        self.agents.heartbeat_interval * self.agents.missed_heartbeats
    }
}

impl EtcdConfig {
    /// Checks `[etcd.tls]` and `[etcd.auth]` against the endpoints (the files are read when
    /// connecting, see [`crate::etcd_conn`]).
    fn check_access(&self) -> anyhow::Result<()> {
        if self.endpoints.is_empty() && (self.tls.is_some() || self.auth.is_some()) {
            bail!(
                "[etcd.tls] and [etcd.auth] apply to etcd.endpoints, which is empty (the \
                 coordinator then runs its own local etcd on 127.0.0.1, mTLS with a private CA under state_dir/etcd-pki); \
                 set etcd.endpoints or remove those tables"
            );
        }
        let https: Vec<&String> = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .collect();
        let plain = self.endpoints.iter().find(|e| !e.starts_with("https://"));
        let has_ca = self.tls.as_ref().is_some_and(|t| t.ca.is_some());
        if let Some(first) = https.first() {
            if let Some(p) = plain {
                bail!(
                    "etcd.endpoints mixes https:// ({first}) and plain ({p}) endpoints; use \
                     https:// for all of them"
                );
            }
            if !has_ca {
                bail!(
                    "etcd.endpoints uses https:// ({first}) but [etcd.tls] ca is not set; set it \
                     to the CA certificate (PEM) that signed etcd's server certificate"
                );
            }
        }
        if let Some(tls) = &self.tls {
            if let Some(p) = plain {
                bail!(
                    "[etcd.tls] is set but etcd endpoint {p} is not https://; use https:// \
                     endpoints (etcd's --listen-client-urls) or remove [etcd.tls]"
                );
            }
            if tls.cert.is_some() != tls.key.is_some() {
                bail!(
                    "[etcd.tls] cert and key go together (the client certificate etcd checks \
                     with --client-cert-auth); set both or neither"
                );
            }
        }
        if let Some(auth) = &self.auth {
            if auth.username.trim().is_empty() {
                bail!("[etcd.auth] username is empty; set it to the etcd user for rollgate");
            }
            if auth.password_file.as_os_str().is_empty() {
                bail!(
                    "[etcd.auth] password_file is empty; set it to a file (mode 600) holding \
                     the password of etcd user '{}'",
                    auth.username
                );
            }
        }
        self.check_secure()
    }
}

impl EtcdConfig {
    /// An external etcd must be TLS (`https://`) and authenticate us (client certificate or
    /// user), unless `allow_insecure_etcd` says otherwise: whoever can write rollgate's keys
    /// controls the fleet.
    fn check_secure(&self) -> anyhow::Result<()> {
        let Some(first) = self.endpoints.first() else {
            return Ok(());
        };
        if self.allow_insecure_etcd {
            tracing::warn!(
                "INSECURE: [etcd] allow_insecure_etcd = true: etcd at {first} may be reached \
                 without TLS or authentication; whoever can write its keys controls the fleet"
            );
            return Ok(());
        }
        let tls = first.starts_with("https://");
        let client_cert = self.tls.as_ref().is_some_and(|t| t.cert.is_some());
        let missing = match (tls, client_cert || self.auth.is_some()) {
            (true, true) => return Ok(()),
            (false, false) => "neither TLS nor authentication",
            (false, true) => "no TLS (the endpoint is not https://)",
            (true, false) => "no authentication (no [etcd.tls] cert/key and no [etcd.auth])",
        };
        bail!(
            "external etcd {first} is configured with {missing}: anyone who can reach it could \
             grant slots and rewrite rollouts. Use https:// endpoints with [etcd.tls] ca and a \
             client certificate (cert, key) or [etcd.auth]; on a development machine only, set \
             allow_insecure_etcd = true in [etcd]"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let c = Config::load(&path).expect("deploy/coordinator.toml must stay valid");
        assert!(c.etcd.endpoints.is_empty());
        assert_eq!(c.listen.port(), 7443);
    }

    #[test]
    fn bad_values_are_named() {
        let mut c: Config = toml::from_str("[etcd]\nprefix = \"rollgate\"").expect("parses");
        let err = c.finish().expect_err("prefix without slashes").to_string();
        assert!(err.contains("etcd.prefix"), "{err}");
        assert!(toml::from_str::<Config>("listen = 5").is_err());
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }

    #[test]
    fn etcd_tls_and_auth_are_checked_against_the_endpoints() {
        let cases = [
            // (config, what the error must name; "" = valid)
            (
                "[etcd]\nendpoints = [\"https://e:2379\"]\n[etcd.tls]\nca = \"/ca.pem\"\n\
                 cert = \"/c.pem\"\nkey = \"/k.pem\"\n[etcd.auth]\nusername = \"rollgate\"\n\
                 password_file = \"/pw\"",
                "",
            ),
            (
                "[etcd]\nendpoints = [\"https://e:2379\"]\n[etcd.tls]\nca = \"/ca.pem\"",
                "no authentication",
            ),
            (
                "[etcd]\nendpoints = [\"https://e:2379\"]\n[etcd.tls]\nca = \"/ca.pem\"\n\
                 [etcd.auth]\nusername = \"u\"\npassword_file = \"/pw\"",
                "",
            ),
            (
                "[etcd]\nendpoints = [\"http://e:2379\"]",
                "allow_insecure_etcd = true",
            ),
            (
                "[etcd]\nendpoints = [\"http://e:2379\"]\nallow_insecure_etcd = true",
                "",
            ),
            (
                "listen = \"0.0.0.0:7443\"\n[tls]\ninsecure_plaintext = true",
                "only on a loopback address",
            ),
            (
                "listen = \"127.0.0.1:7443\"\n[tls]\ninsecure_plaintext = true",
                "",
            ),
            (
                "[etcd]\nendpoints = [\"https://e:2379\"]",
                "[etcd.tls] ca is not set",
            ),
            (
                "[etcd]\nendpoints = [\"https://e:2379\"]\n[etcd.tls]\ncert = \"/c.pem\"\n\
                 key = \"/k.pem\"",
                "[etcd.tls] ca is not set",
            ),
            (
                "[etcd]\nendpoints = [\"https://e:2379\"]\n[etcd.tls]\nca = \"/ca.pem\"\n\
                 cert = \"/c.pem\"",
                "cert and key go together",
            ),
            (
                "[etcd]\nendpoints = [\"http://e:2379\"]\n[etcd.tls]\nca = \"/ca.pem\"",
                "is not https://",
            ),
            (
                "[etcd]\nendpoints = [\"https://a:2379\", \"http://b:2379\"]\n[etcd.tls]\n\
                 ca = \"/ca.pem\"",
                "mixes https://",
            ),
            (
                "[etcd.auth]\nusername = \"rollgate\"\npassword_file = \"/pw\"",
                "etcd.endpoints, which is empty",
            ),
            (
                "[etcd]\nendpoints = [\"http://e:2379\"]\n[etcd.auth]\nusername = \"\"\n\
                 password_file = \"/pw\"",
                "[etcd.auth] username is empty",
            ),
            (
                "[etcd]\nendpoints = [\"http://e:2379\"]\n[etcd.auth]\nusername = \"u\"\n\
                 password_file = \"\"",
                "[etcd.auth] password_file is empty",
            ),
        ];
        for (text, want) in cases {
            let mut c: Config = toml::from_str(text).expect("parses");
            match (c.finish(), want) {
                (Ok(()), "") => {}
                (Ok(()), want) => panic!("{text:?} was accepted; want an error naming {want:?}"),
                (Err(e), "") => panic!("{text:?} was refused: {e}"),
                (Err(e), want) => assert!(e.to_string().contains(want), "{text:?}: {e}"),
            }
        }
        // The password itself never goes into the config.
        let no_inline = "[etcd]\nendpoints = [\"http://e:2379\"]\n[etcd.auth]\n\
                         username = \"u\"\npassword = \"x\"";
        assert!(toml::from_str::<Config>(no_inline).is_err());
    }
}
