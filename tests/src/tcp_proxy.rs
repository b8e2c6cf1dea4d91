//! A cuttable TCP proxy on loopback: cuts one link (say coordinator ↔ etcd) and nothing else.
//!
//! [`TcpProxy::start`] listens on `127.0.0.1:0` and forwards every connection to a target, one
//! thread per direction (blocking I/O, no polling). [`TcpProxy::cut`] takes the link down in
//! one of two ways ([`Cut`]); [`TcpProxy::heal`] puts it back:
//!
//! - [`Cut::Refuse`]: every live connection is closed (both sockets shut down, so both ends see
//!   EOF or a reset) and the listening socket is closed, so a new connect is refused
//!   (`ECONNREFUSED`), as when the peer's process is gone. Heal binds the same port again.
//! - [`Cut::BlackHole`]: closer to a real partition. Live connections stay open but nothing
//!   crosses them (bytes wait in the proxy and the kernel buffers, as unacknowledged segments
//!   wait for retransmission); new connects are accepted and then hear nothing. Heal lets the
//!   held bytes through, in order, and forwards the held connections to the target, so a peer
//!   whose own timeouts did not fire carries on as after a short partition.
//!
//! Dropping the proxy closes everything and joins its listener thread.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

/// How a cut link behaves (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Live connections are closed; new connects are refused.
    Refuse,
    /// Nothing crosses live connections; new connects are accepted and hear nothing.
    BlackHole,
}

/// The link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Open,
    Cut(Cut),
    /// The proxy is being dropped.
    Closed,
}

/// How long a heal keeps trying to bind the proxy's port again (something may hold it for a
/// moment).
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes moved per read.
const CHUNK: usize = 16 * 1024;
/// Time allowed for connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The link and the listener, under one lock so that `cut` and `heal` can wait for the
/// listener to follow.
#[derive(Debug)]
struct State {
    link: Link,
    /// Whether the listening socket is open.
    listening: bool,
}

/// What the listener thread and the connection threads share.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    changed: Condvar,
    /// Every live connection's sockets (client side and target side), to shut them down on a
    /// refusing cut or on drop.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_id: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicU64,
}

/// A TCP proxy from a loopback port to `target` that a test can cut and heal.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("proxy: cannot bind")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                link: Link::Open,
                listening: true,
            }),
            changed: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || listen_loop(s, addr, listener))?;
        Ok(TcpProxy {
            addr,
            shared,
            listener: Some(thread),
        })
    }

    /// Where clients connect (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// `endpoint` (a URL such as `https://127.0.0.1:2379`) with its host and port replaced by
    /// the proxy's: what a client configured with `endpoint` should use instead.
    pub fn endpoint_via(&self, endpoint: &str) -> String {
        let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        if scheme.is_empty() {
            format!("{}{path}", self.addr)
        } else {
            format!("{scheme}://{}{path}", self.addr)
        }
    }

    /// Connections accepted so far (held ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections open right now (held ones included).
    pub fn live(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Takes the link down (see [`Cut`]). Returns once live connections are closed and the
    /// port refuses (refuse), or once no byte crosses any more (black hole).
    pub fn cut(&self, how: Cut) {
        set_link(&self.shared, Link::Cut(how));
        if how == Cut::Refuse {
            close_all(&self.shared);
            // Wakes the listener so that it sees the cut and closes its socket.
            let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
            self.wait_listening(false);
        }
    }

    /// Puts the link back: held connections and bytes go through, new connects are forwarded.
    /// Returns once the port accepts again.
    pub fn heal(&self) {
        set_link(&self.shared, Link::Open);
        self.wait_listening(true);
    }

    /// Waits (up to [`REBIND_TIMEOUT`]) until the listener is open or closed.
    fn wait_listening(&self, want: bool) {
        let state = lock(&self.shared.state);
        let (_state, timeout) = self
            .shared
            .changed
            .wait_timeout_while(state, REBIND_TIMEOUT, |s| s.listening != want)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            eprintln!(
                "proxy {}: listener still not {}",
                self.addr,
                if want { "open" } else { "closed" }
            );
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        set_link(&self.shared, Link::Closed);
        close_all(&self.shared);
        let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        if let Some(t) = self.listener.take() {
            let _ = t.join();
        }
    }
}

/// The `host:port` of a URL such as `https://127.0.0.1:2379` (an IP, not a name).
pub fn endpoint_addr(endpoint: &str) -> anyhow::Result<SocketAddr> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .parse()
        .with_context(|| format!("{endpoint:?} does not name an ip:port"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_link(shared: &Shared, link: Link) {
    lock(&shared.state).link = link;
    shared.changed.notify_all();
}

fn set_listening(shared: &Shared, listening: bool) {
    lock(&shared.state).listening = listening;
    shared.changed.notify_all();
}

fn close_all(shared: &Shared) {
    for socks in lock(&shared.conns).drain().map(|(_, v)| v) {
        for s in socks {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Blocks while the link is black-holed; `false` when the connection must end instead (a
/// refusing cut or the proxy's drop).
fn wait_passable(shared: &Shared) -> bool {
    let mut state = lock(&shared.state);
    loop {
        match state.link {
            Link::Open => return true,
            Link::Cut(Cut::BlackHole) => {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            Link::Cut(Cut::Refuse) | Link::Closed => return false,
        }
    }
}

/// Accepts connections while the link is open or black-holed; while it refuses, holds no
/// listening socket, and binds the same port again on heal.
fn listen_loop(shared: Arc<Shared>, addr: SocketAddr, first: TcpListener) {
    let mut listener = Some(first);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => match rebind(&shared, addr) {
                Some(l) => l,
                None => return,
            },
        };
        for client in l.incoming() {
            let link = lock(&shared.state).link;
            match link {
                Link::Closed => return,
                Link::Cut(Cut::Refuse) => break,
                Link::Open | Link::Cut(Cut::BlackHole) => {
                    if let Ok(client) = client {
                        spawn_connection(&shared, client);
                    }
                }
            }
        }
        // Closes the listening socket: connects are refused from now on.
        drop(l);
        set_listening(&shared, false);
    }
}

/// Waits for the link to stop refusing, then binds `addr` again. `None` when the proxy is
/// dropped (or the port cannot be had back).
fn rebind(shared: &Shared, addr: SocketAddr) -> Option<TcpListener> {
    {
        let mut state = lock(&shared.state);
        while state.link == Link::Cut(Cut::Refuse) {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.link == Link::Closed {
            return None;
        }
    }
    let deadline = std::time::Instant::now() + REBIND_TIMEOUT;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => {
                set_listening(shared, true);
                return Some(l);
            }
            Err(e) if std::time::Instant::now() > deadline => {
                eprintln!("proxy {addr}: cannot listen again after a heal: {e}");
                return None;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, client: TcpStream) {
    shared.accepted.fetch_add(1, Ordering::Relaxed);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if let Ok(c) = client.try_clone() {
        lock(&shared.conns).insert(id, vec![c]);
    }
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("proxy-conn-{id}"))
        .spawn(move || {
            connection(&s, id, client);
            lock(&s.conns).remove(&id);
        });
    if spawned.is_err() {
        lock(&shared.conns).remove(&id);
    }
}

/// One connection: waits out a black hole, connects to the target, then pumps both ways.
fn connection(shared: &Arc<Shared>, id: u64, client: TcpStream) {
    if !wait_passable(shared) {
        return;
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    {
        let mut conns = lock(&shared.conns);
        // A refusing cut between the wait and here already shut the client down.
        let Some(socks) = conns.get_mut(&id) else {
            return;
        };
        match upstream.try_clone() {
            Ok(u) => socks.push(u),
            Err(_) => return,
        }
    }
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let s = shared.clone();
    let back = std::thread::spawn(move || pump(&s, u2, c2));
    pump(shared, client, upstream);
    let _ = back.join();
}

/// Copies `from` to `to` until EOF or an error, holding bytes while the link is black-holed.
fn pump(shared: &Shared, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !wait_passable(shared) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::time::Instant;

    const T: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(300);

    /// An echo server on loopback; returns its address.
    fn echo() -> anyhow::Result<SocketAddr> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(mut r) = s.try_clone() else { return };
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        Ok(addr)
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    fn connect(p: &TcpProxy, read_timeout: Duration) -> anyhow::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&p.addr(), T)?;
        s.set_read_timeout(Some(read_timeout))?;
        Ok(s)
    }

    #[test]
    fn forwards_then_refuses_when_cut_then_forwards_again() -> anyhow::Result<()> {
        let p = TcpProxy::start(echo()?)?;
        let mut s = connect(&p, T)?;
        assert_eq!(roundtrip(&mut s, b"hello")?, b"hello");

        p.cut(Cut::Refuse);
        // The live connection is closed: the read sees EOF or a reset, not an echo.
        let r = roundtrip(&mut s, b"again");
        assert!(
            r.is_err(),
            "a live connection survived a refusing cut: {r:?}"
        );
        // A new connect is refused by the kernel (no listening socket).
        let e = TcpStream::connect_timeout(&p.addr(), T).err();
        assert_eq!(
            e.as_ref().map(std::io::Error::kind),
            Some(ErrorKind::ConnectionRefused),
            "{e:?}"
        );

        p.heal();
        let mut s = connect(&p, T)?;
        assert_eq!(roundtrip(&mut s, b"back")?, b"back");
        Ok(())
    }

    #[test]
    fn black_hole_holds_bytes_and_connections_until_heal() -> anyhow::Result<()> {
        let p = TcpProxy::start(echo()?)?;
        let mut live = connect(&p, T)?;
        assert_eq!(roundtrip(&mut live, b"one")?, b"one");

        p.cut(Cut::BlackHole);
        live.set_read_timeout(Some(SHORT))?;
        live.write_all(b"held")?;
        let mut buf = [0u8; 4];
        let e = live.read_exact(&mut buf).err();
        assert!(
            matches!(
                e.as_ref().map(std::io::Error::kind),
                Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)
            ),
            "bytes crossed a black hole, or the link broke: {e:?}"
        );
        // A new connect is accepted and hears nothing either.
        let mut fresh = connect(&p, SHORT)?;
        fresh.write_all(b"new!")?;
        assert!(
            fresh.read_exact(&mut buf).is_err(),
            "a held connection was answered"
        );

        p.heal();
        live.set_read_timeout(Some(T))?;
        fresh.set_read_timeout(Some(T))?;
        live.read_exact(&mut buf)?;
        assert_eq!(&buf, b"held", "held bytes arrive after the heal, in order");
        fresh.read_exact(&mut buf)?;
        assert_eq!(&buf, b"new!");
        assert_eq!(p.accepted(), 2);
        Ok(())
    }

    #[test]
    fn drop_closes_live_connections() -> anyhow::Result<()> {
        let p = TcpProxy::start(echo()?)?;
        let mut s = connect(&p, T)?;
        assert_eq!(roundtrip(&mut s, b"x")?, b"x");
        let started = Instant::now();
        drop(p);
        assert!(
            roundtrip(&mut s, b"y").is_err(),
            "a connection outlived the proxy"
        );
        assert!(started.elapsed() < T, "drop took {:?}", started.elapsed());
        Ok(())
    }
}
