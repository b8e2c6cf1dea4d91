//! The container backend: each release is an image archive (`docker save`) run as its own
//! container through the Docker Engine API (HTTP/1.1 over a unix socket; Podman's
//! Docker-compatible socket serves the same calls).
//!
//! A restart, after the executor swapped `current`:
//!
//! 1. finds the container of the release `current` names (label `rollgate.release`); if there
//!    is none, loads `current/<binary>` (`POST /images/load`) and creates one from the
//!    service's settings, named `<container_name>-<release dir>`;
//! 2. stops the containers of this service that run (gracefully, `stop_timeout`), because the
//!    published ports are taken by one container at a time; they are kept, not removed (ones
//!    that were already down, such as a failed release's, are removed);
//! 3. starts the new container and waits until the engine says it runs.
//!
//! A rollback is the same restart with `current` pointing back: the old container is found
//! and started again. Once a release is settled (committed, or rolled back to),
//! [`Backend::settled`] removes this service's other containers.
//!
//! Afterwards the container's state is read every [`STATE_POLL_INTERVAL`]: it is down once it
//! no longer runs, is gone, or the engine restarted it (`RestartCount` grew).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use hyper::body::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

mod api;
pub(crate) mod engine;
pub(crate) mod pull;

use crate::backend::{Backend, BackendError, Exit, Reporter};
use crate::config::{Backend as BackendKind, ContainerSettings, ServiceConfig};
use crate::release::releases::ServiceDir;
use api::{decode, Created};
use engine::{encode, full, Engine, Listed};
pub use engine::{ContainerError, API_CALL_TIMEOUT, RELEASE_LABEL, SERVICE_LABEL};
use pull::AuthUsed;
use rollgate_proto::image_ref::{PinnedImage, ARTIFACT_MAX_BYTES};
use rollgate_proto::registry_auth;

/// How often a running container's state is read.
pub const STATE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long the agent, when it starts, waits for the installed release's container to run.
pub const ADOPT_START_WAIT: Duration = Duration::from_secs(120);

/// The `POST /containers/create` body for a release.
fn create_body(
    cfg: &ServiceConfig,
    settings: &ContainerSettings,
    release: &str,
    image: &str,
) -> Value {
    let env: Vec<String> = cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut exposed = serde_json::Map::new();
    let mut bindings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in &settings.ports {
        let key = format!("{}/tcp", p.container);
        exposed.insert(key.clone(), json!({}));
        bindings
            .entry(key)
            .or_default()
            .push(json!({ "HostPort": p.host.to_string() }));
    }
    let mut body = json!({
        "Image": image,
        "Env": env,
        "Labels": { SERVICE_LABEL: cfg.name, RELEASE_LABEL: release },
        "ExposedPorts": exposed,
        "StopTimeout": cfg.stop_timeout.as_secs().max(1),
        "HostConfig": {
            "PortBindings": bindings,
            "Binds": settings.mounts,
            "RestartPolicy": { "Name": settings.restart_policy.word() },
        },
    });
    if let Some(cmd) = &settings.command {
        body["Cmd"] = json!(cmd);
    }
    body
}

/// The image a release dir's artifact pins, if it is an image reference artifact (`None`: an
/// image archive). A file that starts like one but is malformed is an error, not an archive.
pub(crate) fn release_image(path: &Path) -> Result<Option<PinnedImage>, String> {
    let head = std::fs::File::open(path).and_then(|f| {
        use std::io::Read as _;
        let mut buf = Vec::new();
        f.take(ARTIFACT_MAX_BYTES + 1).read_to_end(&mut buf)?;
        Ok(buf)
    });
    let head = head.map_err(|e| format!("cannot read the release {}: {e}", path.display()))?;
    if !PinnedImage::is_artifact(&head) {
        return Ok(None);
    }
    PinnedImage::from_artifact(&head)
        .map(Some)
        .map_err(|e| format!("release {}: {e}", path.display()))
}

/// Before anything is stopped: when the release `release` of this service pins an image, the
/// engine gets it (pulled with the service's `registry_auth`, progress to `report`). Returns
/// a note for the order's progress; an archive release needs nothing here (it is loaded at
/// the restart). Used by updates and by stage orders alike.
pub(crate) async fn prepare_release(
    settings: &ContainerSettings,
    dir: &ServiceDir,
    release: &str,
    report: Reporter,
) -> Result<Option<String>, String> {
    let path = dir.release_path(release).join(dir.binary());
    let Some(image) = release_image(&path)? else {
        return Ok(None);
    };
    ensure_image(settings, &image, report)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Makes sure the engine holds `image`: pulled with the service's `registry_auth` unless it is
/// there already. Returns a note for the order's progress.
async fn ensure_image(
    settings: &ContainerSettings,
    image: &PinnedImage,
    report: Reporter,
) -> Result<String, ContainerError> {
    let engine = Engine {
        socket: settings.socket.clone(),
    };
    if engine.has_image(image).await? {
        return Ok(format!("image {image} is already in the engine"));
    }
    let (creds, auth) = match &settings.registry_auth {
        None => (None, AuthUsed::NotConfigured),
        Some(p) => match registry_auth::read(p, image.registry())? {
            Some(c) => (Some(c), AuthUsed::From(p.clone())),
            None => (None, AuthUsed::NoEntry(p.clone())),
        },
    };
    report(format!("pulling image {image} from {}", image.registry()));
    let began = Instant::now();
    engine.pull(image, creds.as_ref(), &auth, &*report).await?;
    Ok(format!(
        "image {image} pulled in {:.1}s, its digest checked",
        began.elapsed().as_secs_f64()
    ))
}

/// The container backend of one service.
#[derive(Debug)]
pub struct ContainerBackend {
    dir: ServiceDir,
    cfg: Arc<ServiceConfig>,
    settings: ContainerSettings,
    engine: Engine,
    /// The container started last (or adopted), while it is believed to run: what
    /// [`Backend::exited`] watches and [`Backend::stop`] stops.
    running: Option<Running>,
    /// When [`Backend::exited`] reads the state next: it is called afresh (and cancelled)
    /// every round of the verify loop, so the pace is kept here rather than in the call.
    next_check: Instant,
}

#[derive(Debug, Clone)]
struct Running {
    id: String,
    name: String,
    release: String,
    /// `RestartCount` when it was started: a larger one means the engine restarted it.
    restarts: u64,
}

impl ContainerBackend {
    /// The backend for `cfg` (whose backend must be `container`).
    pub fn new(dir: ServiceDir, cfg: Arc<ServiceConfig>) -> ContainerBackend {
        let settings = match &cfg.backend {
            BackendKind::Container(s) => s.clone(),
            other => unreachable!("container backend for a {other:?} service"),
        };
        ContainerBackend {
            dir,
            engine: Engine {
                socket: settings.socket.clone(),
            },
            settings,
            cfg,
            running: None,
            next_check: Instant::now(),
        }
    }

    /// This service's containers on the engine: labelled with its name and named
    /// `<container_name>-…`, so agents that share an engine (one per VM on a shared host, or
    /// the tests) each see only their own.
    async fn list(&self) -> Result<Vec<Listed>, ContainerError> {
        let prefix = format!("{}-", self.settings.container_name);
        let mut listed = self.engine.list(&self.cfg.name).await?;
        listed.retain(|c| c.name.starts_with(&prefix));
        Ok(listed)
    }

    fn container_name(&self, release: &str) -> String {
        format!("{}-{release}", self.settings.container_name)
    }

    /// The container of `release`: found, or created from its image archive.
    async fn container_for(
        &self,
        release: &str,
        listed: &[Listed],
    ) -> Result<(String, String), BackendError> {
        if let Some(c) = listed.iter().find(|c| c.release == release) {
            return Ok((c.id.clone(), c.name.clone()));
        }
        let artifact = self.dir.release_path(release).join(self.dir.binary());
        let image = match release_image(&artifact).map_err(|why| ContainerError::Load {
            path: artifact.clone(),
            why,
        })? {
            Some(pinned) => {
                // Pulled before the swap; pulled again here only if the engine lost it since.
                let quiet: Reporter = Arc::new(|_| {});
                ensure_image(&self.settings, &pinned, quiet).await?;
                pinned.to_string()
            }
            None => self.engine.load(&artifact).await?,
        };
        let name = self.container_name(release);
        let body = create_body(&self.cfg, &self.settings, release, &image);
        let (_, answer) = self
            .engine
            .call(
                Method::POST,
                &format!("/containers/create?name={}", encode(&name)),
                Some((full(Bytes::from(body.to_string())), "application/json")),
                API_CALL_TIMEOUT,
                &[],
            )
            .await?;
        let id = decode::<Created>("container create", &answer)
            .map_err(ContainerError::Answer)?
            .id;
        tracing::info!(container = %name, %image, "created container");
        Ok((id, name))
    }

    /// Removes a container and its image (unless `keep_image`, or another container, uses
    /// it); the release dir keeps the archive, should the release be wanted again.
    async fn discard(&self, c: &Listed, keep_image: Option<&str>) -> Result<(), ContainerError> {
        self.engine.remove(&c.id).await?;
        tracing::info!(container = %c.name, "removed container");
        if !c.image.is_empty() && Some(c.image.as_str()) != keep_image {
            if let Err(e) = self.engine.remove_image(&c.image).await {
                tracing::warn!(image = %c.image, "cannot remove: {e}");
            }
        }
        Ok(())
    }

    /// Stops every running container of this service except `keep`.
    async fn stop_others(&self, listed: &[Listed], keep: &str) -> Result<(), ContainerError> {
        for c in listed.iter().filter(|c| c.running && c.id != keep) {
            tracing::info!(container = %c.name, "stopping container");
            self.engine.stop(&c.id, self.cfg.stop_timeout).await?;
        }
        Ok(())
    }

    /// Starts container `id` and waits until the engine says it runs.
    async fn start_and_wait(
        &mut self,
        id: String,
        name: String,
        release: String,
        deadline: Instant,
    ) -> Result<(), BackendError> {
        // The engine may reset `RestartCount` on a deliberate start: the baseline is the lowest
        // count seen, and a count above it means the engine restarted the container.
        let mut base = self
            .engine
            .inspect(&id)
            .await?
            .map(|s| s.restart_count)
            .unwrap_or(0);
        self.engine.start(&id).await?;
        loop {
            let state = self.engine.inspect(&id).await?;
            if let Some(s) = &state {
                base = base.min(s.restart_count);
            }
            match state {
                Some(s) if s.running && !s.restarting => {
                    self.running = Some(Running {
                        id,
                        name,
                        release,
                        restarts: base,
                    });
                    return Ok(());
                }
                Some(s) if s.restart_count > base => {
                    return Err(ContainerError::NotRunning {
                        name,
                        why: format!(
                            "exited and was restarted by the engine; it {}",
                            s.describe()
                        ),
                    }
                    .into())
                }
                Some(s) if s.restarting || s.status == "created" => {}
                Some(s) => {
                    return Err(ContainerError::NotRunning {
                        name,
                        why: format!("did not stay up: it {}", s.describe()),
                    }
                    .into())
                }
                None => {
                    return Err(ContainerError::NotRunning {
                        name,
                        why: "is gone".into(),
                    }
                    .into())
                }
            }
            if Instant::now() >= deadline {
                return Err(ContainerError::NotRunning {
                    name,
                    why: "did not come up in time".into(),
                }
                .into());
            }
            tokio::time::sleep(STATE_POLL_INTERVAL).await;
        }
    }

    async fn restart_inner(&mut self, deadline: Duration) -> Result<Instant, BackendError> {
        let began = Instant::now();
        let Some(release) = self.dir.current_dir().map_err(|e| ContainerError::Load {
            path: self.dir.current_link(),
            why: e.to_string(),
        })?
        else {
            return Err(BackendError::NotInstalled(self.dir.current_link()));
        };
        let listed = self.list().await?;
        let (id, name) = self.container_for(&release, &listed).await?;
        self.running = None;
        self.stop_others(&listed, &id).await?;
        // Ones that were already down (a release that failed, now being rolled back from)
        // are not worth keeping, and removing them first lets the engine finish tearing
        // down their network (Podman cleans up a crashed container's ports asynchronously,
        // racing the start below for the same ports).
        let keep_image = listed.iter().find(|c| c.id == id).map(|c| c.image.as_str());
        for c in listed.iter().filter(|c| !c.running && c.id != id) {
            self.discard(c, keep_image).await?;
        }
        let started = Instant::now();
        tracing::info!(container = %name, "starting container");
        self.start_and_wait(id, name, release, began + deadline)
            .await?;
        Ok(started)
    }
}

impl Backend for ContainerBackend {
    fn is_up(&self) -> bool {
        self.running.is_some()
    }

    fn agent_restarts(&self) -> bool {
        // The engine's restart policy decides.
        false
    }

    fn adopt(&mut self) -> BoxFuture<'_, (Option<String>, Result<(), BackendError>)> {
        async move {
            let Ok(Some(release)) = self.dir.current_dir() else {
                return (
                    None,
                    Err(BackendError::NotInstalled(self.dir.current_link())),
                );
            };
            let listed = match self.list().await {
                Ok(l) => l,
                Err(e) => return (None, Err(e.into())),
            };
            if let Some(c) = listed.iter().find(|c| c.release == release && c.running) {
                let restarts = match self.engine.inspect(&c.id).await {
                    Ok(Some(s)) => s.restart_count,
                    Ok(None) => 0,
                    Err(e) => return (None, Err(e.into())),
                };
                self.running = Some(Running {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    release,
                    restarts,
                });
                let others = listed.len() - 1;
                let note = (others > 0).then(|| {
                    format!(
                        "{others} other container(s) of this service kept until the next commit"
                    )
                });
                return (note, Ok(()));
            }
            let note = Some(format!(
                "container of {release} was not running; starting it"
            ));
            (note, self.restart_inner(ADOPT_START_WAIT).await.map(drop))
        }
        .boxed()
    }

    fn preflight(&mut self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            self.engine
                .call(Method::GET, "/_ping", None, API_CALL_TIMEOUT, &[])
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn restart(&mut self, deadline: Duration) -> BoxFuture<'_, Result<Instant, BackendError>> {
        self.restart_inner(deadline).boxed()
    }

    fn stop(&mut self) -> BoxFuture<'_, Option<String>> {
        async move {
            let r = self.running.take()?;
            Some(match self.engine.stop(&r.id, self.cfg.stop_timeout).await {
                Ok(()) => format!("stopped container {}", r.name),
                Err(e) => format!("could not stop container {}: {e}", r.name),
            })
        }
        .boxed()
    }

    fn exited(&mut self) -> BoxFuture<'_, Exit> {
        async move {
            let Some(r) = self.running.clone() else {
                return futures::future::pending().await;
            };
            loop {
                tokio::time::sleep_until(self.next_check).await;
                self.next_check = Instant::now() + STATE_POLL_INTERVAL;
                let why = match self.engine.inspect(&r.id).await {
                    Ok(Some(s)) if s.restart_count > r.restarts => Some(format!(
                        "was restarted by the engine ({} restarts); it {}",
                        s.restart_count,
                        s.describe()
                    )),
                    Ok(Some(s)) if !s.running => Some(s.describe()),
                    Ok(Some(_)) => None,
                    Ok(None) => Some("is gone".into()),
                    // The engine not answering says nothing about the container.
                    Err(e) => {
                        tracing::warn!(container = %r.name, "cannot read container state: {e}");
                        None
                    }
                };
                if let Some(why) = why {
                    self.running = None;
                    return Exit {
                        release: r.release,
                        description: format!("container {} {why}", r.name),
                    };
                }
            }
        }
        .boxed()
    }

    fn settled(&mut self) -> BoxFuture<'_, ()> {
        async move {
            let Some(keep) = self.running.as_ref().map(|r| r.id.clone()) else {
                return;
            };
            let listed = match self.list().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("cannot list containers to remove the old ones: {e}");
                    return;
                }
            };
            let keep_image = listed
                .iter()
                .find(|c| c.id == keep)
                .map(|c| c.image.as_str());
            for c in listed.iter().filter(|c| c.id != keep) {
                if let Err(e) = self.discard(c, keep_image).await {
                    tracing::warn!(container = %c.name, "cannot remove: {e}");
                }
            }
        }
        .boxed()
    }

    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        // The container outlives the agent.
        async {}.boxed()
    }
}
