//! The agent binary on its own: a bad config is refused with a message that names the field.
//! (The agent against a real coordinator is tested end to end in `tests/tests/`.)

use std::process::Command;

#[test]
fn binary_reports_a_bad_config_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "host_id = \"web-1\"\ncoordinator = \"http://127.0.0.1:1\"\nstate_dir = \"/tmp/x\"\n\
         [[services]]\nname = \"demo\"\nbackend = \"systemd\"\nbinary = \"x\"\n",
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`services[0].unit`") && err.contains("unit = \"demo.service\""),
        "{err}"
    );
}
