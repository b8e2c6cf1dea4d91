//! The references the big-artifact throughput is held to, measured in the same run.
//!
//! The bound's reference is the same job done by plain tools: the same bytes, to the same
//! number of concurrent receivers, through TLS over loopback, each receiver writing its copy
//! to a file as it receives it with a rolling sha256 and an fsync at the end — one
//! `openssl s_server -WWW` per receiver (at the coordinator's priority) and `curl | tee FILE |
//! openssl dgst -sha256; sync FILE` (at the agents' priority). That is "what the loopback and TLS allow"
//! for this job on this machine, and it moves with the disk's other traffic the way the
//! transfer does, because it writes as much. Printed beside it, not used by the bound: one
//! core's `openssl speed` of the cipher and of sha256, `sha256sum` of the file (coreutils,
//! without SHA-NI: too slow to stand in the receivers' pipeline), and the old
//! reference, a `dd conv=fsync` of one copy (a tenth to a fiftieth of the volume the transfer
//! writes, so it swung 203-1448 MB/s with other disk traffic).

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Stdio};

use super::*;

/// The cipher suite rustls (ring provider) prefers, hence the one both ends negotiate; the
/// plain-tools run negotiates it too (TLS 1.3, TLS_AES_256_GCM_SHA384 is openssl's first).
pub(crate) const OPENSSL_CIPHER: &str = "aes-256-gcm";
/// How long one `s_server` may take to listen.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one plain-tools receiver may take (`curl --max-time`, seconds).
const RECEIVER_TIMEOUT_SECS: u32 = 1200;
const MB: f64 = 1e6;

/// Every reference, bytes per second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct References {
    /// The plain-tools job with as many receivers as agents: the aggregate bound's reference.
    pub tls_job: f64,
    /// The plain-tools job with one receiver: the one-agent-alone bound's reference.
    pub tls_one: f64,
    /// `openssl speed -evp aes-256-gcm`, one core.
    pub aes: f64,
    /// `openssl speed -evp sha256`, one core.
    pub sha: f64,
    /// `sha256sum` of the release file.
    pub sha256sum: f64,
    /// The old reference: `dd bs=1M conv=fsync` of one copy.
    pub dd: f64,
}

impl References {
    /// Measures them all on `file` (whose sha256 each receiver must get), in `dir`.
    pub(crate) fn measure(file: &Path, dir: &Path, receivers: usize) -> anyhow::Result<Self> {
        let (sha256sum, digest) = sha256sum_speed(file)?;
        let tls_job = plain_tls_job(file, dir, receivers, &digest)?;
        let tls_one = plain_tls_job(file, dir, 1, &digest)?;
        let r = References {
            tls_job,
            tls_one,
            aes: openssl_speed(OPENSSL_CIPHER)?,
            sha: openssl_speed("sha256")?,
            sha256sum,
            dd: dd_speed(file, dir)?,
        };
        println!(
            "references: plain tools (openssl s_server -> curl | tee | openssl dgst -sha256, sync), \
             {receivers} receivers at once {:.0} MB/s, one receiver {:.0} MB/s [the bounds' \
             references]; openssl speed -evp {OPENSSL_CIPHER} {:.0} MB/s, sha256 {:.0} MB/s \
             (1 core, 16 KiB blocks); sha256sum of the file {:.0} MB/s; dd of the file with \
             fsync {:.0} MB/s (the old reference)",
            r.tls_job / MB,
            r.tls_one / MB,
            r.aes / MB,
            r.sha / MB,
            r.sha256sum / MB,
            r.dd / MB
        );
        Ok(r)
    }

    /// The note naming the references, for a figure.
    pub(crate) fn note(&self, receivers: usize) -> String {
        let job = if receivers == 1 {
            self.tls_one
        } else {
            self.tls_job
        };
        format!(
            "reference: plain tools doing the same job ({receivers} TLS receivers on loopback, \
             tee to file + openssl sha256 + fsync) {:.0} MB/s; beside it openssl {OPENSSL_CIPHER} \
             {:.0}, sha256 {:.0} (1 core), old reference min(aes, dd {:.0}) {:.0} MB/s",
            job / MB,
            self.aes / MB,
            self.sha / MB,
            self.dd / MB,
            self.aes.min(self.dd) / MB
        )
    }
}

/// One `openssl s_server -WWW` per receiver serving `file`'s dir, and as many `curl | tee |
/// sha256sum; sync` receivers at once; returns the aggregate bytes per second.
fn plain_tls_job(file: &Path, dir: &Path, receivers: usize, digest: &str) -> anyhow::Result<f64> {
    let work = dir.join("plain-tls");
    fs::create_dir_all(&work)?;
    let (cert, key) = (work.join("cert.pem"), work.join("key.pem"));
    run_quiet(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &key.display().to_string(),
                "-out",
                &cert.display().to_string(),
            ]),
    )?;
    let served = file.parent().context("the release file has no dir")?;
    let name = file.file_name().context("no file name")?.to_string_lossy();
    let mut servers = Servers(Vec::new());
    let mut ports = Vec::new();
    for _ in 0..receivers {
        let port = rollgate_tests::free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .current_dir(served)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start openssl s_server")?;
        servers.0.push(child);
        ports.push(port);
    }
    for &port in &ports {
        rollgate_tests::wait_for("openssl s_server to listen", SERVER_READY_TIMEOUT, || {
            Ok(TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()))
        })?;
    }
    let t0 = Instant::now();
    let mut receiving = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let out = work.join(format!("copy-{i}"));
        let script = format!(
            "curl -sSk -m {RECEIVER_TIMEOUT_SECS} https://127.0.0.1:{port}/{name} | tee {out} \
             | openssl dgst -sha256 -r && sync {out}",
            out = out.display()
        );
        let child = Command::new("nice")
            .args(["-n", AGENT_NICE, "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start a receiver")?;
        receiving.push((child, out));
    }
    let mut late = Vec::new();
    for (mut child, out) in receiving {
        let mut said = String::new();
        if let Some(mut o) = child.stdout.take() {
            o.read_to_string(&mut said)?;
        }
        let ok = child.wait()?.success();
        late.push(t0.elapsed());
        let len = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let _ = fs::remove_file(&out);
        if !ok || !said.starts_with(digest) {
            bail!("a plain-tools receiver got {len} bytes with sha256 {said:?}, not {digest}");
        }
    }
    let wall = late.iter().max().copied().unwrap_or_default();
    drop(servers);
    let _ = fs::remove_dir_all(&work);
    let size = fs::metadata(file)?.len();
    Ok(receivers as f64 * size as f64 / wall.as_secs_f64().max(1e-6))
}

/// The `s_server`s of a plain-tools run, killed (by their own pids) when it ends.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().context("cannot run openssl")?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `sha256sum FILE`: (bytes per second, the digest).
fn sha256sum_speed(file: &Path) -> anyhow::Result<(f64, String)> {
    let t0 = Instant::now();
    let out = Command::new("sha256sum").arg(file).output()?;
    let secs = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let digest = text
        .split_whitespace()
        .next()
        .context("no digest from sha256sum")?;
    Ok((fs::metadata(file)?.len() as f64 / secs, digest.to_string()))
}

/// One core's speed of `alg` from `openssl speed -evp`, in bytes per second.
fn openssl_speed(alg: &str) -> anyhow::Result<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-evp", alg, "-bytes", "16384", "-seconds", "2"])
        .output()
        .context("cannot run openssl speed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The result line: `AES-256-GCM  4567890.12k` (thousands of bytes per second).
    let k = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with(alg))
        .filter_map(|l| {
            l.split_whitespace()
                .last()?
                .strip_suffix('k')?
                .parse::<f64>()
                .ok()
        })
        .next_back()
        .with_context(|| format!("no result in openssl speed's output: {text}"))?;
    Ok(k * 1000.0)
}

/// A plain copy of the file (`dd bs=1M conv=fsync`, as the agents fsync), bytes per second.
fn dd_speed(src: &Path, dir: &Path) -> anyhow::Result<f64> {
    let dst = dir.join("dd-copy");
    let t0 = Instant::now();
    let ok = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .args(["bs=1M", "conv=fsync", "status=none"])
        .status()?
        .success();
    let secs = t0.elapsed().as_secs_f64();
    let len = fs::metadata(&dst)?.len();
    fs::remove_file(&dst)?;
    if !ok {
        bail!("dd failed");
    }
    Ok(len as f64 / secs)
}
