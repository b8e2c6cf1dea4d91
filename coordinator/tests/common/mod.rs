//! Helpers shared by the coordinator's integration tests.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

use rollgate_coordinator::config::EtcdConfig;
use rollgate_coordinator::local_etcd::LocalEtcd;
use tokio_util::sync::CancellationToken;

/// A real etcd in `dir`, started the way a coordinator starts its own (TLS and all), with the
/// config it was started from and the token that stops it. Needs the `etcd` binary
/// (`ETCD_BIN`).
#[allow(dead_code)]
pub async fn start_etcd(dir: &Path) -> (EtcdConfig, LocalEtcd, CancellationToken) {
    let cfg = EtcdConfig {
        binary: std::env::var_os("ETCD_BIN")
            .map(Into::into)
            .unwrap_or_else(|| "etcd".into()),
        local_port: free_port_pair(),
        ..EtcdConfig::default()
    };
    let cancel = CancellationToken::new();
    let etcd = LocalEtcd::start(&cfg, dir, cancel.clone())
        .await
        .expect("local etcd starts");
    (cfg, etcd, cancel)
}

/// A port `p` with `p + 1` free too (the local etcd's client and peer ports).
pub fn free_port_pair() -> u16 {
    loop {
        let p = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if p < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, p + 1)).is_ok() {
            return p;
        }
    }
}
