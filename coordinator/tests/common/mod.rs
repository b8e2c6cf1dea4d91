//! Helpers shared by the coordinator's integration tests.

use std::net::{Ipv4Addr, TcpListener};

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
