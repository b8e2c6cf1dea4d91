//! A webhook receiver owned by the test: a plain HTTP server on 127.0.0.1 that checks each
//! delivery's HMAC-SHA256 signature and event-id header, records it, and answers 200 while
//! `up` (503 otherwise, to make the leader retry).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// How long the receiver waits for a request's bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The body's event id.
    pub event_id: u64,
    /// The body's kind ("rollout_halted").
    pub kind: String,
    /// The whole body.
    pub body: Value,
    /// The signature matches the body and the secret, and the id header matches the body.
    pub signature_ok: bool,
    /// Answered 200 (the receiver was up).
    pub taken: bool,
}

/// The receiver: its address, the switch it answers 200 with, what it saw.
pub struct Receiver {
    /// Where it listens (`http://{addr}/...` in `[[notify]] url`).
    pub addr: SocketAddr,
    /// Answer 200 while true, 503 while false.
    pub up: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    /// Listens on a free port; signatures are checked against `secret`.
    pub fn start(secret: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (u, s) = (up.clone(), seen.clone());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let _ = serve(conn, &key, &u, &s);
            }
        });
        Ok(Receiver { addr, up, seen })
    }

    /// Every delivery so far, in arrival order.
    pub fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn serve(
    mut conn: TcpStream,
    key: &ring::hmac::Key,
    up: &AtomicBool,
    seen: &Mutex<Vec<Delivery>>,
) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    reader.read_line(&mut line)?; // request line
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let json: Value = serde_json::from_slice(&body)?;
    let want = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(key, &body).as_ref())
    );
    let taken = up.load(Ordering::SeqCst);
    let d = Delivery {
        event_id: json["id"].as_u64().unwrap_or_default(),
        kind: json["kind"].as_str().unwrap_or_default().to_string(),
        signature_ok: headers.get("x-rollgate-signature") == Some(&want)
            && headers.get("x-rollgate-event-id").map(String::as_str)
                == Some(&json["id"].to_string()),
        body: json,
        taken,
    };
    if let Ok(mut s) = seen.lock() {
        s.push(d);
    }
    let status = if taken {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    Ok(())
}
