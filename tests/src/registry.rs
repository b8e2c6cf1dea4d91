//! A real container registry (CNCF distribution 2.8, Debian's `docker-registry`) over https,
//! with htpasswd users, reachable both from the test process and from inside one engine's
//! network namespace; and pushing test images into it with the engine's own CLI.
//!
//! The test process and the rollgate CLI (which resolves a tag to a digest) run in the root
//! network namespace, the engine ([`DockerEngine`]) pulls from inside its own; loopback cannot
//! serve both, so a veth pair joins the two with a /30 taken from 100.64.0.0/10 (unique per
//! reserved port, so per registry and test process). The registry listens on the root side,
//! `.1`. A non-loopback address also keeps TLS honest: dockerd treats registries on
//! 127.0.0.0/8 as insecure and would not verify the certificate there. The engines trust the
//! throwaway CA through `/etc/docker/certs.d/ADDR/ca.crt` and `/etc/containers/certs.d/ADDR/`
//! (tests run as root), removed with the veth and the registry process on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;

use crate::managers::{podman_args, DockerEngine, Kind, IMAGE_CMD};
use crate::ports::free_port;

/// How long the registry may take to answer `/v2/` (it is ready in well under a second).
const READY_WAIT: Duration = Duration::from_secs(10);
/// Timeout of one https request to the registry.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of the registry's log shown when something fails.
const LOG_TAIL: usize = 40;
/// The link networks' base: 100.64.0.0/10 (shared address space) has room for a /30 per port.
const LINK_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// The manifest types the digest is asked for (what docker and podman push).
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json";
/// The realm the registry names in its `WWW-Authenticate` challenge.
const REALM: &str = "rollgate-test";

/// A running registry; killed, its link deleted and the engines' trust in its CA removed on
/// drop.
pub struct Registry {
    dir: PathBuf,
    /// The root side of the link, where the registry listens.
    ip: Ipv4Addr,
    port: u16,
    /// The root end of the veth pair; deleting it deletes both ends.
    veth: String,
    /// The `certs.d` directories made for the engines.
    trust_dirs: Vec<PathBuf>,
    /// The registry process; `None` once [`Registry::stop`]ped.
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry with files under `dir`, reachable from the root namespace and from
    /// `engine`'s, with the htpasswd `users` (name, password); panics with the log if it
    /// cannot.
    pub fn start(dir: &Path, engine: &DockerEngine, users: &[(&str, &str)]) -> Registry {
        std::fs::create_dir_all(dir).expect("registry dir");
        let port = free_port();
        let mut reg = Registry {
            dir: dir.to_owned(),
            ip: link_ip(port, 1),
            port,
            veth: format!("rgr{port}"),
            trust_dirs: Vec::new(),
            child: None,
        };
        // From here on a panic drops `reg`, which undoes whatever was done.
        reg.link(engine.netns())
            .unwrap_or_else(|e| panic!("cannot link the registry to {}: {e:#}", engine.netns()));
        reg.write_files(users)
            .unwrap_or_else(|e| panic!("cannot prepare the registry in {}: {e:#}", dir.display()));
        reg.spawn();
        reg.wait_ready();
        reg
    }

    /// `IP:PORT`, as image references and `certs.d` name the registry.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The CA certificate (PEM) the registry's certificate is signed by.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes a Docker `config.json` at `path` holding `user`'s credentials for this registry
    /// (`{"auths": {ADDR: {"auth": base64(USER:PASS)}}}`), the file the agent reads.
    pub fn auth_file(&self, path: &Path, user: &str, pass: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let json = serde_json::json!({ "auths": { self.addr(): { "auth": auth } } });
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("auth file dir");
        }
        std::fs::write(path, serde_json::to_vec_pretty(&json).expect("json"))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// The tail of the registry's log.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// Kills the registry (the link and the trust stay): it is unreachable from then on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The status of `GET /v2/` from the test process, with `creds` (user, password) if given.
    pub fn v2_status(&self, creds: Option<(&str, &str)>) -> anyhow::Result<u16> {
        Ok(self.request(reqwest::Method::GET, "/v2/", creds)?.0)
    }

    /// The digest (`sha256:...`) of `repo:tag`'s manifest, as the registry reports it
    /// (`Docker-Content-Digest` of a `HEAD`).
    pub fn manifest_digest(
        &self,
        repo: &str,
        tag: &str,
        user: &str,
        pass: &str,
    ) -> anyhow::Result<String> {
        let path = format!("/v2/{repo}/manifests/{tag}");
        let (status, digest) = self.request(reqwest::Method::HEAD, &path, Some((user, pass)))?;
        match digest {
            Some(d) if status == 200 => Ok(d),
            _ => bail!("HEAD {path}: status {status}, digest {digest:?}"),
        }
    }

    /// Builds an image from `/bin/busybox` and `run_sh` with no registry, pushes it as
    /// `ADDR/repo_tag` with `engine`'s own CLI and `user`'s credentials, removes it from the
    /// engine (a later rollout must pull it) and returns its manifest digest.
    pub fn push_image(
        &self,
        engine: &DockerEngine,
        repo_tag: &str,
        run_sh: &str,
        user: &str,
        pass: &str,
    ) -> String {
        let (repo, tag) = repo_tag
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("push_image wants REPO:TAG, not {repo_tag:?}"));
        let reference = format!("{}/{repo_tag}", self.addr());
        let tar = engine.rootfs_tar(&reference, run_sh);
        match engine.kind() {
            Kind::Docker => self.push_with_docker(engine, &reference, &tar, user, pass),
            Kind::Podman => push_with_podman(engine, &reference, &tar, user, pass),
        }
        .unwrap_or_else(|e| panic!("cannot push {reference}: {e:#}\nregistry:\n{}", self.log()));
        self.manifest_digest(repo, tag, user, pass)
            .unwrap_or_else(|e| panic!("pushed {reference}, but {e:#}\nregistry:\n{}", self.log()))
    }

    /// `docker import`, `docker login` (into `DIR/docker-config`), `docker push`, `docker rmi`.
    fn push_with_docker(
        &self,
        engine: &DockerEngine,
        reference: &str,
        tar: &Path,
        user: &str,
        pass: &str,
    ) -> anyhow::Result<()> {
        engine.docker(
            &["import", "--change", IMAGE_CMD, "-", reference],
            Some(tar),
        );
        let config = self.dir.join("docker-config");
        let login = [
            "login",
            "--username",
            user,
            "--password-stdin",
            &self.addr(),
        ];
        checked(docker_cli(engine, &config, &login), Some(pass))?;
        checked(docker_cli(engine, &config, &["push", reference]), None)?;
        engine.docker(&["rmi", reference], None);
        Ok(())
    }

    /// The veth pair between the root namespace and `netns`, `.1` and `.2` of the /30.
    fn link(&self, netns: &str) -> anyhow::Result<()> {
        let inner = format!("rgn{}", self.port);
        // A process that died with this port reserved may have left its link behind.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let root_ip = format!("{}/30", self.ip);
        let inner_ip = format!("{}/30", link_ip(self.port, 2));
        ip(&[
            "link", "add", &self.veth, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", netns])?;
        ip(&["addr", "add", &root_ip, "dev", &self.veth])?;
        ip(&["link", "set", &self.veth, "up"])?;
        ip(&["-n", netns, "addr", "add", &inner_ip, "dev", &inner])?;
        ip(&["-n", netns, "link", "set", &inner, "up"])
    }

    /// The CA and the server certificate, the htpasswd file, `config.yml`, and the engines'
    /// trust in the CA.
    fn write_files(&mut self, users: &[(&str, &str)]) -> anyhow::Result<()> {
        let dir = &self.dir;
        let (ca, ca_key) = crate::scrape_tls::ca("rollgate test registry CA")?;
        std::fs::write(self.ca_pem(), ca.pem())?;
        let server =
            crate::scrape_tls::leaf(dir, "server", Some(IpAddr::V4(self.ip)), (&ca, &ca_key))?;
        let mut htpasswd = String::new();
        for (user, pass) in users {
            htpasswd.push_str(&bcrypt_entry(user, pass)?);
        }
        std::fs::write(dir.join("htpasswd"), htpasswd)?;
        let config = format!(
            "version: 0.1\nlog: {{level: info}}\n\
             storage: {{filesystem: {{rootdirectory: {data}}}, delete: {{enabled: true}}}}\n\
             http: {{addr: '{addr}', secret: {REALM}, tls: {{certificate: {cert}, key: {key}}}}}\n\
             auth: {{htpasswd: {{realm: {REALM}, path: {htpasswd}}}}}\n",
            data = dir.join("data").display(),
            addr = self.addr(),
            cert = server.cert.display(),
            key = server.key.display(),
            htpasswd = dir.join("htpasswd").display(),
        );
        std::fs::write(dir.join("config.yml"), config)?;
        for base in ["/etc/docker/certs.d", "/etc/containers/certs.d"] {
            let trust = Path::new(base).join(self.addr());
            std::fs::create_dir_all(&trust).with_context(|| format!("{}", trust.display()))?;
            self.trust_dirs.push(trust.clone());
            std::fs::copy(self.ca_pem(), trust.join("ca.crt"))?;
        }
        Ok(())
    }

    /// `docker-registry serve config.yml`, logging to `registry.log`.
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run docker-registry (apt-get install docker-registry): {e}")
            });
        self.child = Some(child);
    }

    /// Waits until `/v2/` asks for credentials (401); panics with the log if the registry
    /// exits or does not answer in time.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let last = match self.v2_status(None) {
                Ok(401) => return,
                Ok(status) => format!("status {status}"),
                Err(e) => format!("{e:#}"),
            };
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "docker-registry exited ({status}) at start:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry did not answer 401 on /v2/ within {READY_WAIT:?} \
                     (last: {last}):\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One https request from the test process: (status, `Docker-Content-Digest`). Runs on a
    /// thread of its own with its own runtime, so callers may be inside a tokio runtime.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        creds: Option<(&str, &str)>,
    ) -> anyhow::Result<(u16, Option<String>)> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca_pem())?)?;
        let url = format!("https://{}{path}", self.addr());
        let creds = creds.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let call = async move {
            let client = reqwest::Client::builder()
                .add_root_certificate(ca)
                .timeout(HTTP_TIMEOUT)
                .build()?;
            let mut req = client
                .request(method, &url)
                .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
            if let Some((user, pass)) = creds {
                req = req.basic_auth(user, Some(pass));
            }
            let resp = req.send().await.with_context(|| url.clone())?;
            let digest = resp.headers().get("docker-content-digest");
            let digest = digest.and_then(|v| v.to_str().ok()).map(str::to_owned);
            anyhow::Ok((resp.status().as_u16(), digest))
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(call)
            })
            .join()
            .map_err(|_| anyhow!("the request thread panicked"))?
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        for dir in &self.trust_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// `docker pull reference` through `engine`'s API with the credentials in
/// `docker_config/config.json` (none if it has none): `Ok(stdout)` or `Err(stderr)`.
pub fn pull(
    engine: &DockerEngine,
    docker_config: &Path,
    reference: &str,
) -> Result<String, String> {
    let out = docker_cli(engine, docker_config, &["pull", reference])
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The `docker` CLI against `engine`'s socket (dockerd or podman's Docker API), with its
/// configuration (and so credentials) in `config`.
fn docker_cli(engine: &DockerEngine, config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.env(
        "DOCKER_HOST",
        format!("unix://{}", engine.socket().display()),
    )
    .env("DOCKER_CONFIG", config)
    .args(args);
    c
}

/// `podman import`, `podman push --creds`, `podman rmi`, with the engine's storage and config,
/// inside its network namespace (where the engine itself pulls from).
fn push_with_podman(
    engine: &DockerEngine,
    reference: &str,
    tar: &Path,
    user: &str,
    pass: &str,
) -> anyhow::Result<()> {
    let tar = tar.display().to_string();
    let creds = format!("{user}:{pass}");
    let steps: [&[&str]; 3] = [
        &["import", "--change", IMAGE_CMD, &tar, reference],
        &["push", "--creds", &creds, reference],
        &["rmi", reference],
    ];
    for args in steps {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", engine.netns()))
            .args(podman_args(engine.dir()))
            .args(args)
            .env("CONTAINERS_CONF", engine.dir().join("containers.conf"));
        checked(c, None).with_context(|| format!("podman {}", args[0]))?;
    }
    Ok(())
}

/// Runs `c` (feeding `stdin` if given) and fails with its output unless it succeeds.
fn checked(mut c: Command, stdin: Option<&str>) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {c:?}"))?;
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes())?;
    }
    drop(input);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `user`'s htpasswd line with a bcrypt hash (the only kind distribution accepts).
fn bcrypt_entry(user: &str, pass: &str) -> anyhow::Result<String> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .context("cannot run htpasswd (apt-get install apache2-utils)")?;
    if !out.status.success() {
        bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(format!("{}\n", String::from_utf8_lossy(&out.stdout).trim()))
}

/// Host `host` of the /30 that belongs to `port`: 100.64.0.0 + (port - 12000) * 4 + host.
fn link_ip(port: u16, host: u32) -> Ipv4Addr {
    let index = u32::from(port).saturating_sub(12_000);
    Ipv4Addr::from(u32::from(LINK_BASE) + index * 4 + host)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
