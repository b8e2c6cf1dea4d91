//! Config file tables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const GOOD: &str = r#"
host_id = "web-1"
coordinator = "http://127.0.0.1:7443"
state_dir = "/var/lib/rollgate-agent"
[labels]
site = "a"
[[services]]
name = "demo"
backend = "process"
binary = "demo-svc"
args = ["--port", "18081"]
env = { GREETING = "hi" }
stop_timeout = "5s"
restart_delay = "1s"
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:18081/health"
expect_status = 200
interval = "200ms"
timeout = "1s"
[[services.probes]]
kind = "tcp"
address = "127.0.0.1:18081"
[[services.probes]]
kind = "exec"
command = ["/bin/sh", "-c", "true"]
"#;

#[test]
fn parses_the_documented_example() {
    let c = Config::parse(GOOD).expect("valid config");
    assert_eq!(c.host_id, "web-1");
    assert_eq!(c.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
    assert_eq!(c.labels.get("site").map(String::as_str), Some("a"));
    let s = c.service("demo").expect("demo configured");
    assert_eq!(s.backend, Backend::Process);
    assert_eq!(s.stop_timeout, Duration::from_secs(5));
    assert_eq!(s.probes.len(), 3);
    assert_eq!(
        s.probes[0].check,
        ProbeCheck::Http {
            url: "http://127.0.0.1:18081/health".into(),
            expect_status: Some(200),
            expect_body: None,
            ca_file: None,
        }
    );
    assert_eq!(s.probes[1].interval, DEFAULT_PROBE_INTERVAL);
    assert_eq!(s.probe_interval(), Duration::from_millis(200));
}

#[test]
fn errors_name_the_field_and_the_fix() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            GOOD.replace("\"web-1\"", "\"web/1\""),
            "`host_id`",
            "not valid",
        ),
        (
            GOOD.replace("http://127.0.0.1:7443", "127.0.0.1:7443"),
            "`coordinator`",
            "https://HOST:PORT",
        ),
        (
            GOOD.replace("http://127.0.0.1:7443", "ftp://c:7443"),
            "`coordinator`",
            "not a coordinator URL",
        ),
        (
            GOOD.replace("[labels]", "[tls]\nca = \"/x\"\ncrt = \"/y\"\n[labels]"),
            "crt",
            "unknown field",
        ),
        (
            GOOD.replace("\"process\"", "\"container\""),
            "`services[0].args`",
            "does not apply to the container backend",
        ),
        (
            GOOD.replace("\"process\"", "\"systemd\""),
            "`services[0].args`",
            "does not apply to the systemd backend",
        ),
        (
            GOOD.replace("\"process\"", "\"foo\""),
            "`services[0].backend`",
            "not a backend",
        ),
        (
            GOOD.replace("\"demo-svc\"", "\"../demo\""),
            "`services[0].binary`",
            "not valid",
        ),
        (
            GOOD.replace("\"demo-svc\"", "\"/bin/demo\""),
            "`services[0].binary`",
            "is absolute",
        ),
        (
            GOOD.replace("\"demo-svc\"", "\"bin//demo\""),
            "`services[0].binary`",
            "not valid",
        ),
        (
            GOOD.replace("\"5s\"", "\"0s\""),
            "`services[0].stop_timeout`",
            "longer than 0s",
        ),
        (
            GOOD.replace("kind = \"tcp\"", "kind = \"udp\""),
            "`services[0].probes[1].kind`",
            "\"exec\", \"systemd\" or \"grpc\"",
        ),
        (
            GOOD.replace("address = \"127.0.0.1:18081\"", "address = \"localhost\""),
            "`services[0].probes[1].address`",
            "HOST:PORT",
        ),
        (
            GOOD.replace("address = \"127.0.0.1:18081\"", "url = \"http://x/\""),
            "`services[0].probes[1].url`",
            "remove it",
        ),
        (
            GOOD.replace("url = \"http://127.0.0.1:18081/health\"", ""),
            "`services[0].probes[0].url`",
            "needs a url",
        ),
        (
            GOOD.replace("[\"/bin/sh\", \"-c\", \"true\"]", "[]"),
            "`services[0].probes[2].command`",
            "needs a command",
        ),
        (
            GOOD.replace("expect_status = 200", "expect_status = 42"),
            "`services[0].probes[0].expect_status`",
            "not an HTTP status",
        ),
        (
            GOOD.replace("interval = \"200ms\"", "interval = \"0s\""),
            "`services[0].probes[0].interval`",
            "longer than 0s",
        ),
        (
            GOOD.replace("site = \"a\"", "site = \"a b\""),
            "`labels.site`",
            "not valid",
        ),
        (
            format!(
                "{GOOD}\n[[services]]\nname = \"demo\"\nbackend = \"process\"\nbinary = \"x\"\n"
            ),
            "`services[1].name`",
            "configured twice",
        ),
        (
            GOOD.replace("host_id = \"web-1\"", "host_id = \"web-1\"\nbogus = 1"),
            "bogus",
            "unknown field",
        ),
        (GOOD.replace("\"200ms\"", "\"soon\""), "interval", "invalid"),
    ];
    for (text, field, fix) in cases {
        let err = Config::parse(&text).expect_err(field).to_string();
        assert!(err.contains(field), "error {err:?} should name {field}");
        assert!(err.contains(fix), "error {err:?} should say {fix:?}");
    }
}

#[test]
fn http_probe_ca_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let field = "`services[0].probes[0].ca_file`";
    for (path, fix) in [
        (&missing, "cannot read"),
        (&junk, "holds no PEM certificate"),
    ] {
        let text = GOOD.replace(
            "expect_status = 200",
            &format!(
                "expect_status = 200\nca_file = {:?}",
                path.display().to_string()
            ),
        );
        let err = Config::parse(&text).expect_err(fix).to_string();
        assert!(err.contains(field), "error {err:?} should name {field}");
        assert!(
            err.contains(&path.display().to_string()),
            "error {err:?} should name the path"
        );
        assert!(err.contains(fix), "error {err:?} should say {fix:?}");
    }
    // Not an http probe: named as a stray field.
    let text = GOOD.replace(
        "address = \"127.0.0.1:18081\"",
        "address = \"127.0.0.1:18081\"\nca_file = \"/x.pem\"",
    );
    let err = Config::parse(&text).expect_err("stray").to_string();
    assert!(err.contains("`services[0].probes[1].ca_file`"), "{err}");
}

/// `source_ca_file` (https release sources with a private CA) is checked at load, naming the
/// field and the file.
#[test]
fn source_ca_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let line = format!("source_ca_file = {:?}\n", junk.display().to_string());
    let err = Config::parse(&format!("{line}{GOOD}"))
        .expect_err("junk")
        .to_string();
    assert!(err.contains("`source_ca_file`"), "{err}");
    assert!(err.contains(&junk.display().to_string()), "{err}");
}

const SYSTEMD: &str = r#"
host_id = "web-1"
coordinator = "http://127.0.0.1:7443"
state_dir = "/var/lib/rollgate-agent"
[[services]]
name = "demo"
backend = "systemd"
unit = "demo.service"
binary = "bin/demo-svc"
format = "tar.gz"
unpack_max_bytes = 1000000
unpack_max_entries = 50
hook_timeout = "5s"
watch_after_commit = "30s"
[services.hooks]
pre_stop = ["/usr/local/bin/drain demo"]
post_start = ["/usr/local/bin/undrain demo"]
on_rollback = ["logger rolled back"]
[[services.probes]]
kind = "systemd"
[[services.probes]]
kind = "grpc"
address = "127.0.0.1:50051"
grpc_service = "demo"
success_threshold = 2
failure_threshold = 3
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:8080/ready"
expect_body = "ready"
"#;

#[test]
fn systemd_services_hooks_tarballs_and_new_probes() {
    let c = Config::parse(SYSTEMD).expect("valid config");
    let s = c.service("demo").expect("demo configured");
    let own = SystemdTarget {
        unit: "demo.service".into(),
        manager: Manager::System,
        bus: None,
    };
    assert_eq!(s.backend, Backend::Systemd(own.clone()));
    assert_eq!(s.binary, "bin/demo-svc");
    assert_eq!(s.format, ArtifactFormat::TarGz);
    assert_eq!(
        s.unpack_limits,
        UnpackLimits {
            max_bytes: 1_000_000,
            max_entries: 50
        }
    );
    assert_eq!(s.hook_timeout, Duration::from_secs(5));
    assert_eq!(s.watch_after_commit, Duration::from_secs(30));
    assert_eq!(s.hooks.pre_stop, ["/usr/local/bin/drain demo"]);
    assert!(s.hooks.pre_start.is_empty());
    assert_eq!(s.hooks.on_rollback, ["logger rolled back"]);
    assert_eq!(
        s.probes[0].check,
        ProbeCheck::Systemd(own),
        "defaults to the own unit"
    );
    assert_eq!(
        s.probes[1].check,
        ProbeCheck::Grpc {
            address: "127.0.0.1:50051".into(),
            service: "demo".into()
        }
    );
    assert_eq!(
        (s.probes[1].success_threshold, s.probes[1].failure_threshold),
        (2, 3)
    );
    assert_eq!(
        (s.probes[2].success_threshold, s.probes[2].failure_threshold),
        (1, 1)
    );
    assert!(
        matches!(&s.probes[2].check, ProbeCheck::Http { expect_body: Some(b), .. } if b == "ready")
    );

    let user = Config::parse(&SYSTEMD.replace(
        "unit = \"demo.service\"",
        "unit = \"demo.service\"\nmanager = \"user\"\nbus = \"unix:path=/tmp/x/bus\"",
    ))
    .expect("user manager");
    let Backend::Systemd(t) = &user.services[0].backend else {
        panic!("systemd backend");
    };
    assert_eq!(
        (t.manager, t.bus.as_deref()),
        (Manager::User, Some("unix:path=/tmp/x/bus"))
    );
    // The systemd probe of the service's own unit goes through the same manager and bus.
    assert_eq!(
        user.services[0].probes[0].check,
        ProbeCheck::Systemd(t.clone())
    );

    // The defaults: auto format, 1 GiB / 10000 entries, 30s hooks, no watch window.
    let plain = Config::parse(GOOD).expect("valid config");
    let p = &plain.services[0];
    assert_eq!(p.format, ArtifactFormat::Auto);
    assert_eq!(p.unpack_limits, UnpackLimits::default());
    assert_eq!(p.hook_timeout, DEFAULT_HOOK_TIMEOUT);
    assert!(p.watch_after_commit.is_zero());
    assert_eq!(p.hooks, Hooks::default());

    let cases: Vec<(String, &str, &str)> = vec![
        (
            SYSTEMD.replace("unit = \"demo.service\"\n", ""),
            "`services[0].unit`",
            "needs the unit",
        ),
        (
            SYSTEMD.replace("\"demo.service\"", "\"demo\""),
            "`services[0].unit`",
            "not a systemd unit name",
        ),
        (
            SYSTEMD.replace(
                "unit = \"demo.service\"",
                "unit = \"demo.service\"\nmanager = \"root\"",
            ),
            "`services[0].manager`",
            "\"system\" or \"user\"",
        ),
        (
            SYSTEMD.replace(
                "unit = \"demo.service\"",
                "unit = \"demo.service\"\nbus = \"/run/bus\"",
            ),
            "`services[0].bus`",
            "not a D-Bus address",
        ),
        (
            SYSTEMD.replace(
                "unit = \"demo.service\"",
                "unit = \"demo.service\"\nrestart_delay = \"1s\"",
            ),
            "`services[0].restart_delay`",
            "RestartSec=",
        ),
        (
            SYSTEMD.replace("\"tar.gz\"", "\"zip\""),
            "`services[0].format`",
            "\"binary\", \"tar.gz\" or \"auto\"",
        ),
        (
            SYSTEMD.replace("1000000", "0"),
            "`services[0].unpack_max_bytes`",
            "more than 0",
        ),
        (
            SYSTEMD.replace("= 50", "= 0"),
            "`services[0].unpack_max_entries`",
            "more than 0",
        ),
        (
            SYSTEMD.replace("\"5s\"", "\"0s\""),
            "`services[0].hook_timeout`",
            "longer than 0s",
        ),
        (
            SYSTEMD.replace("[\"logger rolled back\"]", "[\"  \"]"),
            "`services[0].hooks.on_rollback[0]`",
            "is empty",
        ),
        (
            SYSTEMD.replace("post_start", "post_stop"),
            "post_stop",
            "unknown field",
        ),
        (
            SYSTEMD.replace("success_threshold = 2", "success_threshold = 0"),
            "`services[0].probes[1].success_threshold`",
            "at least 1",
        ),
        (
            SYSTEMD.replace("expect_body = \"ready\"", "expect_body = \"\""),
            "`services[0].probes[2].expect_body`",
            "is empty",
        ),
        (
            SYSTEMD.replace(
                "grpc_service = \"demo\"",
                "grpc_service = \"demo\"\nurl = \"http://x/\"",
            ),
            "`services[0].probes[1].url`",
            "does not apply to a \"grpc\" probe",
        ),
        (
            SYSTEMD.replace("address = \"127.0.0.1:50051\"", "address = \"localhost\""),
            "`services[0].probes[1].address`",
            "HOST:PORT",
        ),
        (
            SYSTEMD.replace(
                "kind = \"systemd\"",
                "kind = \"systemd\"\nmanager = \"user\"",
            ),
            "`services[0].probes[0].manager`",
            "the service's `manager` applies",
        ),
        (
            GOOD.replace(
                "kind = \"tcp\"\naddress = \"127.0.0.1:18081\"",
                "kind = \"systemd\"",
            ),
            "`services[0].probes[1].unit`",
            "needs the unit to check",
        ),
        (
            GOOD.replace(
                "binary = \"demo-svc\"",
                "binary = \"demo-svc\"\nunit = \"x.service\"",
            ),
            "`services[0].unit`",
            "only for backend = \"systemd\"",
        ),
    ];
    for (text, field, fix) in cases {
        let err = Config::parse(&text).expect_err(field).to_string();
        assert!(err.contains(field), "error {err:?} should name {field}");
        assert!(err.contains(fix), "error {err:?} should say {fix:?}");
    }

    // A systemd probe of another unit, on a process-backend service.
    let other = Config::parse(&GOOD.replace(
        "kind = \"tcp\"\naddress = \"127.0.0.1:18081\"",
        "kind = \"systemd\"\nunit = \"postgresql.service\"",
    ))
    .expect("valid config");
    assert_eq!(
        other.services[0].probes[1].check,
        ProbeCheck::Systemd(SystemdTarget {
            unit: "postgresql.service".into(),
            manager: Manager::System,
            bus: None
        })
    );
}

#[test]
fn coordinator_replicas() {
    let one = Config::parse(GOOD).expect("valid config");
    assert_eq!(one.coordinators, ["http://127.0.0.1:7443"]);

    let list = GOOD.replace(
        "coordinator = \"http://127.0.0.1:7443\"",
        "coordinators = [\"http://a:7443\", \"http://b:7443\"]",
    );
    let many = Config::parse(&list).expect("valid config");
    assert_eq!(many.coordinators, ["http://a:7443", "http://b:7443"]);

    let line = "coordinator = \"http://127.0.0.1:7443\"";
    let cases: Vec<(String, &str, &[&str])> = vec![
        (
            GOOD.replace(line, &format!("{line}\ncoordinators = [\"http://b:7443\"]")),
            "`coordinators`",
            &["`coordinator`", "keep one of them"],
        ),
        (
            GOOD.replace(line, ""),
            "`coordinator`",
            &["is missing", "`coordinators = ["],
        ),
        (
            GOOD.replace(line, "coordinators = []"),
            "`coordinators`",
            &["lists no URL"],
        ),
        (
            GOOD.replace(line, "coordinators = [\"http://a:7443\", \"b:7443\"]"),
            "`coordinators[1]`",
            &["https://HOST:PORT"],
        ),
        (
            GOOD.replace(
                line,
                "coordinators = [\"http://a:7443\", \"http://b:7443\", \"http://a:7443\"]",
            ),
            "`coordinators[2]`",
            &["listed twice"],
        ),
        (
            GOOD.replace(line, "coordinators = \"http://a:7443\""),
            "coordinators",
            &["invalid type"],
        ),
    ];
    for (text, field, says) in cases {
        let err = Config::parse(&text).expect_err(field).to_string();
        assert!(err.contains(field), "error {err:?} should name {field}");
        for s in says {
            assert!(err.contains(s), "error {err:?} should say {s:?}");
        }
    }
}

#[test]
fn example_config_in_deploy_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
    // The example names files of a real host: its signing key (generated here), and the
    // host certificate the fleet comes from (absent here, so the fleet line is used).
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("release.pub");
    let pair = rollgate_proto::signing::SigningKey::generate().expect("key");
    std::fs::write(&key, pair.public().to_pem()).expect("write key");
    let text = std::fs::read_to_string(&path)
        .expect("read")
        .replace(
            "keys = [\"/etc/rollgate/release.pub\"]",
            &format!("keys = [{:?}]", key.display().to_string()),
        )
        .replace("# fleet = \"prod\"", "fleet = \"prod\"");
    let c = Config::parse(&text).expect("deploy/agent.toml must stay valid");
    assert_eq!(c.coordinators.len(), 1);
    assert!(c.signing.required, "signing is on in the example");
    assert_eq!(c.signing.keys.len(), 1);
    // The commented-out replica list there must be valid too once uncommented (and the
    // single `coordinator` line dropped).
    let listed: String = text
        .lines()
        .filter(|l| !l.starts_with("coordinator = "))
        .map(|l| match l.strip_prefix("# coordinators = ") {
            Some(list) => format!("coordinators = {list}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let c = Config::parse(&listed).expect("the documented replica list must be valid");
    assert!(c.coordinators.len() > 1, "{:?}", c.coordinators);
}

#[test]
fn container_services() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let c = Config::load(&deploy.join("agent-container.toml"))
        .expect("deploy/agent-container.toml must stay valid");
    let s = &c.services[0];
    assert_eq!(
        s.backend,
        Backend::Container(ContainerSettings {
            socket: PathBuf::from("/var/run/docker.sock"),
            container_name: "demo".into(),
            ports: vec![PortMap {
                host: 18081,
                container: 8080
            }],
            mounts: vec!["/srv/demo:/data:ro".into()],
            restart_policy: RestartPolicy::OnFailure,
            command: Some(vec!["/demo-svc".into(), "--port".into(), "8080".into()]),
            registry_auth: Some(PathBuf::from("/etc/rollgate/registry-auth.json")),
        })
    );
    assert_eq!(s.env.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(s.stop_timeout, Duration::from_secs(5));

    // Defaults: the docker socket, the service's name, no ports or mounts, policy "no".
    let minimal = GOOD
        .replace("\"process\"", "\"container\"")
        .replace("args = [\"--port\", \"18081\"]\n", "")
        .replace("restart_delay = \"1s\"\n", "");
    let c = Config::parse(&minimal).expect("minimal container service");
    assert_eq!(
        c.services[0].backend,
        Backend::Container(ContainerSettings {
            socket: PathBuf::from(DEFAULT_CONTAINER_SOCKET),
            container_name: "demo".into(),
            ports: vec![],
            mounts: vec![],
            restart_policy: RestartPolicy::No,
            command: None,
            registry_auth: None,
        })
    );

    let with = |extra: &str| minimal.replace("binary = ", &format!("{extra}\nbinary = "));
    let cases: Vec<(String, &str, &str)> = vec![
        (
            with("ports = [\"18081\"]"),
            "`services[0].ports[0]`",
            "host:container",
        ),
        (
            with("ports = [\"a:80\"]"),
            "`services[0].ports[0]`",
            "host:container",
        ),
        (
            with("mounts = [\"data:/data\"]"),
            "`services[0].mounts[0]`",
            "absolute",
        ),
        (
            with("mounts = [\"/a:/b:rx\"]"),
            "`services[0].mounts[0]`",
            "ro|rw",
        ),
        (
            with("restart_policy = \"sometimes\""),
            "`services[0].restart_policy`",
            "not a restart policy",
        ),
        (with("command = []"), "`services[0].command`", "is empty"),
        (
            with("socket = \"docker.sock\""),
            "`services[0].socket`",
            "absolute",
        ),
        (
            with("container_name = \"a/b\""),
            "`services[0].container_name`",
            "container name",
        ),
        (
            with("unit = \"demo.service\""),
            "`services[0].unit`",
            "only for backend = \"systemd\"",
        ),
        (
            GOOD.replace("binary = ", "ports = [\"1:2\"]\nbinary = "),
            "`services[0].ports`",
            "does not apply to the process backend",
        ),
    ];
    for (text, field, says) in cases {
        let err = Config::parse(&text).expect_err(field).to_string();
        assert!(err.contains(field), "error {err:?} should name {field}");
        assert!(err.contains(says), "error {err:?} should say {says:?}");
    }
}

#[test]
fn example_systemd_config_and_unit_in_deploy_agree() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let c = Config::load(&deploy.join("agent-systemd.toml"))
        .expect("deploy/agent-systemd.toml must stay valid");
    let s = &c.services[0];
    let Backend::Systemd(target) = &s.backend else {
        panic!("the example is for the systemd backend: {:?}", s.backend);
    };
    assert_eq!(target.unit, "demo.service");
    assert!(!s.hooks.pre_stop.is_empty() && !s.hooks.on_rollback.is_empty());
    // The example unit runs the release through the `current` link the agent swaps.
    let unit = std::fs::read_to_string(deploy.join("demo-systemd.service")).expect("unit");
    let current = c.state_dir.join("services").join(&s.name).join("current");
    let exec = format!("ExecStart={}/{}", current.display(), s.binary);
    assert!(
        unit.lines().any(|l| l.starts_with(&exec)),
        "demo-systemd.service should have a line starting with {exec}"
    );
}

#[test]
fn relative_state_dir_becomes_absolute() {
    let c = Config::parse(&GOOD.replace("/var/lib/rollgate-agent", "state")).expect("valid config");
    assert!(c.state_dir.is_absolute(), "{}", c.state_dir.display());
    assert!(c.state_dir.ends_with("state"));
}

#[test]
fn missing_file_names_the_path() {
    let err = Config::load(Path::new("/nonexistent/agent.toml")).expect_err("no file");
    assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
}

#[test]
fn self_upgrade_table() {
    // Absent: off.
    assert_eq!(Config::parse(GOOD).expect("good").self_upgrade, None);
    let with = |table: &str| {
        // The table goes before [[services]] so it is not read as part of a service.
        let (head, services) = GOOD.split_once("[[services]]").expect("services");
        Config::parse(&format!("{head}{table}\n[[services]]{services}"))
    };
    let c =
        with("[self_upgrade]\nbinary = \"/usr/bin/rollgate-agent\"\nconfirm_deadline = \"30s\"")
            .expect("valid");
    assert_eq!(
        c.self_upgrade,
        Some(SelfUpgradeConfig {
            binary: PathBuf::from("/usr/bin/rollgate-agent"),
            confirm_deadline: Duration::from_secs(30),
        })
    );
    let c = with("[self_upgrade]").expect("defaults");
    let su = c.self_upgrade.expect("on");
    assert_eq!(su.binary, std::env::current_exe().expect("exe"));
    assert_eq!(su.confirm_deadline, DEFAULT_CONFIRM_DEADLINE);
    for (table, field, says) in [
        (
            "[self_upgrade]\nbinary = \"bin/agent\"",
            "self_upgrade.binary",
            "not an absolute path",
        ),
        (
            "[self_upgrade]\nconfirm_deadline = \"100ms\"",
            "self_upgrade.confirm_deadline",
            "under 1s",
        ),
        ("[self_upgrade]\nbinry = \"/x\"", "binry", "unknown field"),
    ] {
        let err = with(table).expect_err(table).to_string();
        assert!(err.contains(field) && err.contains(says), "{table}: {err}");
    }
    let clash = GOOD.replace("name = \"demo\"", "name = \"rollgate-agent\"");
    let (head, services) = clash.split_once("[[services]]").expect("services");
    let err = Config::parse(&format!("{head}[self_upgrade]\n[[services]]{services}"))
        .expect_err("clash")
        .to_string();
    assert!(err.contains("rename the service"), "{err}");
}

#[test]
fn durations_past_a_year_are_refused_naming_the_field() {
    // Found while writing the agent_config fuzz target: a timer armed with this overflowed and
    // panicked the agent (tokio Instant + Duration).
    let text = GOOD.replace(
        "host_id = \"web-1\"",
        "host_id = \"web-1\"\nheartbeat_interval = \"400000000000years\"",
    );
    let e = Config::parse(&text)
        .expect_err("an absurd heartbeat")
        .to_string();
    assert!(
        e.contains("heartbeat_interval") && e.contains("longer than"),
        "{e}"
    );
    let text = GOOD.replace("stop_timeout = \"5s\"", "stop_timeout = \"400days\"");
    let e = Config::parse(&text)
        .expect_err("a stop timeout past a year")
        .to_string();
    assert!(e.contains("services[0].stop_timeout"), "{e}");
    Config::parse(&GOOD.replace("stop_timeout = \"5s\"", "stop_timeout = \"300days\""))
        .expect("within a year");
}
