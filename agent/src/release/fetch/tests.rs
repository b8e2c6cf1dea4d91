//! Fetching from files, http servers and resumes, with their refusals.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

fn fetcher() -> Fetcher {
    let (_tx, rx) = watch::channel(None);
    Fetcher::new(rx, None).expect("fetcher")
}

fn artifact_for(body: &[u8], source: &str) -> Artifact {
    Artifact::try_from(&pb::Release {
        version: "2.0.0".into(),
        source: source.into(),
        sha256: hex::encode(Sha256::digest(body)),
        size: body.len() as u64,
        signature: None,
    })
    .expect("valid release")
}

fn body() -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn release_checks() {
    let ok = pb::Release {
        version: "1.0.0".into(),
        source: "store:".into(),
        sha256: "a".repeat(64),
        size: 3,
        signature: None,
    };
    assert!(Artifact::try_from(&ok).is_ok());
    for (bad, want) in [
        (
            pb::Release {
                version: "../x".into(),
                ..ok.clone()
            },
            "version",
        ),
        (
            pb::Release {
                sha256: "abc".into(),
                ..ok.clone()
            },
            "sha256",
        ),
        (
            pb::Release {
                size: 0,
                ..ok.clone()
            },
            "size is 0",
        ),
        (
            pb::Release {
                source: "ftp://x".into(),
                ..ok.clone()
            },
            "not one the agent knows",
        ),
        (
            pb::Release {
                source: "file://relative".into(),
                ..ok.clone()
            },
            "not one the agent knows",
        ),
    ] {
        let err = Artifact::try_from(&bad).expect_err(want).to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[tokio::test]
async fn file_source_is_fetched_and_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("artifact");
    std::fs::write(&src, body()).expect("source");
    let a = artifact_for(&body(), &format!("file://{}", src.display()));
    let got = fetcher().fetch(&a, dir.path()).await.expect("fetch");
    assert_eq!(got, dir.path().join(format!("{}.partial", a.sha256)));
    assert_eq!(std::fs::read(&got).expect("read"), body());
}

#[tokio::test]
async fn wrong_digest_is_refused_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("artifact");
    std::fs::write(&src, body()).expect("source");
    let mut a = artifact_for(&body(), &format!("file://{}", src.display()));
    let actual = a.sha256.clone();
    a.sha256 = "0".repeat(64);
    let err = fetcher().fetch(&a, dir.path()).await.expect_err("mismatch");
    assert_eq!(
        err.to_string(),
        format!("sha256 mismatch: expected {}, got {actual}", "0".repeat(64))
    );
    assert!(!dir.path().join(format!("{}.partial", a.sha256)).exists());
}

#[tokio::test]
async fn oversized_source_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("artifact");
    std::fs::write(&src, body()).expect("source");
    let mut a = artifact_for(&body(), &format!("file://{}", src.display()));
    a.size -= 1;
    let err = fetcher()
        .fetch(&a, dir.path())
        .await
        .expect_err("oversized");
    assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
    assert!(
        err.to_string().contains("refusing to write past it"),
        "{err}"
    );
    assert!(!dir.path().join(format!("{}.partial", a.sha256)).exists());
}

#[tokio::test]
async fn resume_appends_to_the_partial_file_and_still_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("artifact");
    let full = body();
    std::fs::write(&src, &full).expect("source");
    let a = artifact_for(&full, &format!("file://{}", src.display()));
    let partial = dir.path().join(format!("{}.partial", a.sha256));

    // A correct prefix is resumed.
    std::fs::write(&partial, &full[..70_000]).expect("prefix");
    fetcher()
        .fetch(&a, dir.path())
        .await
        .expect("resumed fetch");
    assert_eq!(std::fs::read(&partial).expect("read"), full);

    // A corrupt prefix is kept by the resume (only the tail is read) but caught by the digest.
    let mut bad = full[..70_000].to_vec();
    bad[10] ^= 0xff;
    std::fs::write(&partial, &bad).expect("bad prefix");
    let err = fetcher()
        .fetch(&a, dir.path())
        .await
        .expect_err("corrupt prefix");
    assert!(matches!(err, FetchError::Digest { .. }), "{err}");
    assert!(!partial.exists(), "a mismatching download is deleted");
}

/// A one-request-per-connection HTTP server that honours (or ignores) Range and records
/// the Range header of each request.
fn serve(
    body: Vec<u8>,
    honour_range: bool,
    extra: usize,
) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                }
            }
            log.lock()
                .expect("log")
                .push(range.map(|r| format!("bytes={r}-")));
            let mut payload = body.clone();
            payload.extend(std::iter::repeat_n(b'x', extra));
            let head = match range {
                Some(start) if honour_range => {
                    let total = payload.len();
                    payload.drain(..start);
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
                        payload.len(),
                        total - 1
                    )
                }
                _ => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    payload.len()
                ),
            };
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&payload);
        }
    });
    (format!("http://{addr}/artifact"), seen)
}

#[tokio::test]
async fn http_fetch_resumes_with_a_range_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = body();
    let (url, seen) = serve(full.clone(), true, 0);
    let a = artifact_for(&full, &url);
    let partial = dir.path().join(format!("{}.partial", a.sha256));
    std::fs::write(&partial, &full[..123_456]).expect("prefix");
    fetcher().fetch(&a, dir.path()).await.expect("fetch");
    assert_eq!(std::fs::read(&partial).expect("read"), full);
    assert_eq!(
        *seen.lock().expect("log"),
        vec![Some("bytes=123456-".to_string())]
    );
}

/// An http source whose first response stops after `cut` bytes of the body (the connection
/// drops) and whose next ones honour the Range asked for; logs each request's range start.
fn serve_cut_once(body: Vec<u8>, cut: usize) -> (String, Arc<Mutex<Vec<Option<usize>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut start = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = v.trim().trim_end_matches('-').parse::<usize>().ok();
                }
            }
            log.lock().expect("log").push(start);
            let (from, to) = (start.unwrap_or(0), if i == 0 { cut } else { body.len() });
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes \
                 {from}-{}/{}\r\nConnection: close\r\n\r\n",
                body.len() - from,
                body.len() - 1,
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body[from..to]);
        }
    });
    (format!("http://{addr}/artifact"), seen)
}

#[tokio::test]
async fn a_cut_download_resumes_after_every_byte_that_arrived() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = body();
    // Less than the sink gathers before a write: kept only if the error flushes it.
    let cut = 150_000;
    let (url, seen) = serve_cut_once(full.clone(), cut);
    let a = artifact_for(&full, &url);
    let partial = dir.path().join(format!("{}.partial", a.sha256));
    fetcher().fetch(&a, dir.path()).await.expect("fetch");
    assert_eq!(std::fs::read(&partial).expect("read"), full);
    assert_eq!(*seen.lock().expect("log"), vec![None, Some(cut)]);
}

#[tokio::test]
async fn http_fetch_starts_over_when_range_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = body();
    let (url, _) = serve(full.clone(), false, 0);
    let a = artifact_for(&full, &url);
    let partial = dir.path().join(format!("{}.partial", a.sha256));
    std::fs::write(&partial, &full[..1000]).expect("prefix");
    fetcher().fetch(&a, dir.path()).await.expect("fetch");
    assert_eq!(std::fs::read(&partial).expect("read"), full);
}

#[tokio::test]
async fn http_source_larger_than_declared_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = body();
    let (url, _) = serve(full.clone(), true, 10);
    let a = artifact_for(&full, &url);
    let err = fetcher()
        .fetch(&a, dir.path())
        .await
        .expect_err("oversized");
    assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
}

#[tokio::test]
async fn http_error_status_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        if let Some(Ok(mut c)) = listener.incoming().next() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let a = artifact_for(b"abc", &format!("http://{addr}/missing"));
    let err = fetcher().fetch(&a, dir.path()).await.expect_err("404");
    assert!(err.to_string().contains("404"), "{err}");
    assert!(!err.retryable());
}

#[test]
fn no_space_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = check_space(dir.path(), u64::MAX).expect_err("nobody has that much space");
    assert!(err.to_string().contains("not enough disk space"), "{err}");
    check_space(dir.path(), 1).expect("one byte is free");
}

/// A server that answers every request with `head` (no body) and counts the paths asked for.
fn serve_fixed(head: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().expect("log").push(path);
            let _ = conn.write_all(head.as_bytes());
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn a_redirect_is_refused_naming_its_status_and_never_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, seen) = serve_fixed(
        "HTTP/1.1 302 Found\r\nLocation: /internal/secret\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let a = artifact_for(b"abc", &format!("{base}/rel/artifact"));
    let err = fetcher().fetch(&a, dir.path()).await.expect_err("302");
    let text = err.to_string();
    assert!(
        text.contains("302 Found") && text.contains("does not follow"),
        "{text}"
    );
    assert!(!err.retryable());
    assert_eq!(
        *seen.lock().expect("log"),
        vec!["/rel/artifact".to_string()]
    );
}

#[tokio::test]
async fn an_error_page_is_not_echoed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, _) = serve_fixed(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 14\r\nConnection: close\r\n\r\ndb password=hunter2",
    );
    let a = artifact_for(b"abc", &format!("{base}/a"));
    let err = fetcher()
        .fetch(&a, dir.path())
        .await
        .expect_err("500")
        .to_string();
    assert!(err.contains("500") && !err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn a_file_source_error_carries_no_os_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, os_text) in [
        ("/nonexistent/artifact", "No such file"),
        ("/root", "Is a directory"),
    ] {
        let a = artifact_for(b"abc", &format!("file://{path}"));
        let err = fetcher()
            .fetch(&a, dir.path())
            .await
            .expect_err(path)
            .to_string();
        assert!(
            err.contains(path) && !err.contains(os_text) && !err.contains("os error"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_partial_download_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let partial = dir.path().join("x.partial");
    drop(Sink::open(&partial, 0, 10).await.expect("open"));
    let mode = std::fs::metadata(&partial)
        .expect("partial")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "partial download mode {mode:o}");
}
