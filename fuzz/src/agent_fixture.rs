//! A real agent for the `coordinator_message` target: its config (parsed by the agent's own
//! parser) and an [`Executor`] started on a fresh state dir for each input, so that inputs do
//! not see each other's journal. Nothing is driven: the services' tasks and stage jobs the
//! executor spawns never run (the runtime is dropped with the input), so what is checked is
//! intake: fencing, the release and signature checks, and the answers sent.
//!
//! Two services: `web` with no signing keys, and `api` with the committed fuzz-only key
//! `fuzz/keys/release.pub` pinned (fleet `fuzz`), whose private half signs the seeds.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rollgate_agent::{Config, Executor, Fetcher, Outbox};
use rollgate_proto::pb;
use tokio::runtime::Runtime;

/// The agent's host id.
pub const HOST: &str = "h1";
/// The fleet signatures must name.
pub const FLEET: &str = "fuzz";
/// A service whose releases need no signature.
pub const OPEN_SERVICE: &str = "web";
/// A service whose releases must carry a signature by the pinned key.
pub const SIGNED_SERVICE: &str = "api";
/// What the agent calls the coordinator it talks to (for its log lines).
const AT: &str = "fuzz";

/// `fuzz/keys/`: the fuzz-only release key pair (`release.key` signs the seeds).
pub fn key_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("keys")
}

/// The agent's config with its state in `state_dir`.
pub fn config_text(state_dir: &Path) -> String {
    format!(
        r#"host_id = "{HOST}"
coordinator = "http://127.0.0.1:9"
state_dir = "{state}"
[tls]
insecure_plaintext = true
[signing]
fleet = "{FLEET}"
[[services]]
name = "{OPEN_SERVICE}"
backend = "process"
binary = "svc"
[[services]]
name = "{SIGNED_SERVICE}"
backend = "process"
binary = "svc"
signing_keys = ["{key}"]
"#,
        state = state_dir.display(),
        key = key_dir().join("release.pub").display(),
    )
}

/// One agent for one input. Fields drop in order: the executor, then the runtime (with the
/// tasks it never ran), then the state dir.
pub struct Agent {
    executor: Executor,
    outbox: Outbox,
    welcomed: bool,
    heartbeat: tokio::time::Interval,
    rt: Runtime,
    _dir: tempfile::TempDir,
}

/// What the agent did with one message.
#[derive(Debug)]
pub struct Handled {
    /// `Err(why)`: the agent ends the session with this reason.
    pub session: Result<(), String>,
    /// What it sent the coordinator in answer.
    pub sent: Vec<pb::agent_message::Msg>,
}

fn fetcher() -> Fetcher {
    static FETCHER: OnceLock<Fetcher> = OnceLock::new();
    FETCHER
        .get_or_init(|| {
            // The session's channel slot; no coordinator channel ever (nothing is fetched).
            let (slot, channel) = tokio::sync::watch::channel(None);
            Box::leak(Box::new(slot));
            Fetcher::new(channel, None).expect("the HTTP client")
        })
        .clone()
}

impl Agent {
    /// Starts the agent's executor on a fresh state dir (as `rollgate_agent::run` does).
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().expect("a scratch dir (TMPDIR)");
        let config = Config::parse(&config_text(dir.path())).expect("the fixture config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (executor, outbox, heartbeat) = {
            let _in = rt.enter();
            let (executor, outbox) = Executor::start(&config, fetcher()).expect("executor");
            (
                executor,
                outbox,
                tokio::time::interval(config.heartbeat_interval),
            )
        };
        let mut agent = Agent {
            executor,
            outbox,
            welcomed: false,
            heartbeat,
            rt,
            _dir: dir,
        };
        agent.drain();
        agent
    }

    /// Hands `msg` to the agent's session handler, as if the coordinator sent it.
    pub fn handle(&mut self, msg: pb::CoordinatorMessage) -> Handled {
        let session = {
            let _in = self.rt.enter();
            rollgate_agent::on_coordinator_message(
                msg,
                AT,
                &self.executor,
                &mut self.welcomed,
                &mut self.heartbeat,
            )
        };
        Handled {
            session,
            sent: self.drain(),
        }
    }

    fn drain(&mut self) -> Vec<pb::agent_message::Msg> {
        let mut out = Vec::new();
        while let Ok(m) = self.outbox.try_recv() {
            out.extend(m.msg);
        }
        out
    }
}
