//! A fleet's settings ([`FleetOpts`]) and their defaults.

use std::path::PathBuf;
use std::time::Duration;

/// How hosts are spread over sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteLayout {
    /// host-1 in site-0, host-2 in site-1, ...: neighbours in host order are in different
    /// sites.
    RoundRobin,
    /// host-1..host-k in site-0, the next k in site-1, ...: a planner that ignored the sites
    /// and took hosts in order would take several of one site at once.
    Blocks,
}

/// Settings for a fleet.
#[derive(Debug, Clone)]
pub struct FleetOpts {
    /// Number of agents (`host-1`...).
    pub agents: usize,
    /// Extra delay the test service waits before it binds (makes each restart's outage long
    /// enough for the observer to see overlaps).
    pub start_delay_ms: u64,
    /// Number of coordinator replicas (`coord-1`...), all on the same etcd. With more than
    /// one, agents get `coordinators = [...]` listing every replica, rotated so that agent i
    /// starts with replica i % n.
    pub coordinators: usize,
    /// Number of sites: agent i (0-based) gets the label `site = "site-{i % sites}"` (or, with
    /// [`SiteLayout::Blocks`], consecutive hosts share a site).
    pub sites: usize,
    /// How hosts are spread over the sites.
    pub site_layout: SiteLayout,
    /// Run every agent (and its service) in its own network namespace, so that
    /// [`Fleet::cut`] can take its link down. Needs root and iproute2.
    pub netns: bool,
    /// Restart a coordinator that exits on its own (see [`Fleet::coordinator_restarts`]).
    pub supervise: bool,
    /// The agents' `[[services]]` tables (TOML), replacing the default `web` process service;
    /// `{state}` becomes the agent's state dir, `{port}` its `service_port`, `{host}` its id.
    pub agent_services: Option<String>,
    /// TOML appended to every coordinator's config (after its `[agents]` table), e.g. an
    /// `[etcd.tls]` table.
    pub coordinator_extra: Option<String>,
    /// TOML lines added to every coordinator's and agent's `[metrics]` table (after its
    /// `listen`), e.g. `tls_cert = "..."`.
    pub metrics_extra: Option<String>,
    /// Run etcd with TLS, client certificates and auth ([`Etcd::start_secure`]); every
    /// coordinator gets the `[etcd.tls]` and `[etcd.auth]` tables it needs, after
    /// `coordinator_extra` (which must then not hold those tables itself). The default: every
    /// link in the tests is mTLS, etcd's included.
    pub etcd_secure: bool,
    /// Replica `k` (1-based: `coord-k`) runs with its wall clock off by this many seconds
    /// (negative: behind), under libfaketime from Debian's `faketime` package (monotonic time
    /// is left alone, so its timers run normally).
    pub clock_offset: Option<(usize, i64)>,
    /// A command every coordinator is started under (`{id}` becomes its replica id), e.g.
    /// `systemd-run --user --wait …` to run it as a unit of a real systemd user manager.
    pub coordinator_wrap: Vec<String>,
    /// Where the coordinators' and agents' binaries come from, when not from this build (e.g.
    /// a previous release's, for mixed-version tests).
    pub bin_dirs: BinDirs,
    /// Serve `[metrics] listen` on every coordinator and agent (the default); the benchmarks
    /// turn it off to measure what the endpoint costs.
    pub metrics: bool,
    /// Each coordinator reaches etcd through its own [`TcpProxy`] ([`Fleet::etcd_proxy`]), so
    /// a test can cut one replica off etcd while its agents stay connected to it.
    pub etcd_via_proxy: bool,
    /// etcd members: 1 (the default) or a cluster ([`EtcdCluster`]; `Fleet::etcd` is member 1,
    /// [`Fleet::etcd_peers`] the others).
    pub etcd_members: usize,
    /// The heartbeat interval the coordinators ask agents for ([`crate::HEARTBEAT`] unless a
    /// benchmark measures another, e.g. production's default of 1 s); a session is dropped
    /// after [`crate::MISSED_HEARTBEATS`] of them.
    pub heartbeat: Duration,
}

/// Directories holding `rollgate-coordinator` and `rollgate-agent` builds other than this one.
#[derive(Debug, Clone, Default)]
pub struct BinDirs {
    pub coordinator: Option<PathBuf>,
    pub agent: Option<PathBuf>,
}

impl Default for FleetOpts {
    fn default() -> Self {
        FleetOpts {
            agents: 3,
            start_delay_ms: 0,
            coordinators: 1,
            sites: 3,
            site_layout: SiteLayout::RoundRobin,
            netns: false,
            supervise: true,
            agent_services: None,
            coordinator_extra: None,
            metrics_extra: None,
            etcd_secure: true,
            clock_offset: None,
            coordinator_wrap: Vec::new(),
            bin_dirs: BinDirs::default(),
            metrics: true,
            etcd_via_proxy: false,
            etcd_members: 1,
            heartbeat: crate::HEARTBEAT,
        }
    }
}
