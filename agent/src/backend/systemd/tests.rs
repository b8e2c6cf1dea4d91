use super::unit_state::UnitState;
use super::*;

fn st(active: &str, sub: &str, result: &str, n: u32, code: i32, status: i32) -> UnitState {
    UnitState {
        load: "loaded".into(),
        active: active.into(),
        sub: sub.into(),
        result: result.into(),
        n_restarts: n,
        exec_main_code: code,
        exec_main_status: status,
    }
}

#[test]
fn judging_unit_states() {
    // (state, baseline, starting, expected: None = not down, Some(text it contains))
    let cases: Vec<(&str, UnitState, u32, bool, Option<&str>)> = vec![
        (
            "running",
            st("active", "running", "success", 0, 0, 0),
            0,
            false,
            None,
        ),
        (
            "reloading",
            st("reloading", "reload", "success", 0, 0, 0),
            0,
            false,
            None,
        ),
        (
            "notify unit still starting",
            st("activating", "start", "success", 0, 0, 0),
            0,
            true,
            None,
        ),
        (
            "restart job: stopped on the way",
            st("inactive", "dead", "success", 0, 0, 0),
            0,
            true,
            None,
        ),
        (
            "stopped while watched",
            st("inactive", "dead", "success", 0, 1, 0),
            0,
            false,
            Some("stopped: inactive (dead"),
        ),
        (
            "failed with an exit code",
            st("failed", "failed", "exit-code", 0, 1, 3),
            0,
            false,
            Some("failed: failed (failed, Result=exit-code, main process exited with status 3)"),
        ),
        (
            "failed while starting",
            st("failed", "failed", "signal", 0, 2, 9),
            0,
            true,
            Some("killed by signal 9"),
        ),
        (
            "start limit",
            st("failed", "failed", "start-limit-hit", 5, 1, 3),
            0,
            false,
            Some("hit its start limit (start-limit-hit"),
        ),
        (
            "crashed, waiting to restart",
            st("activating", "auto-restart", "exit-code", 0, 1, 3),
            0,
            true,
            Some("crashed and systemd is restarting it"),
        ),
        (
            "restarted since the start",
            st("active", "running", "success", 2, 1, 3),
            0,
            false,
            Some("restarted by systemd 2 time(s) since it was started (NRestarts=2)"),
        ),
        (
            "restarts before the baseline do not count",
            st("active", "running", "success", 2, 0, 0),
            2,
            false,
            None,
        ),
    ];
    for (name, state, baseline, starting, want) in cases {
        let got = state.down(baseline, starting);
        match (want, &got) {
            (None, None) => {}
            (Some(text), Some(g)) if g.contains(text) => {}
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn exec_start_must_go_through_current() {
    let root = tempfile::tempdir().expect("tempdir");
    let real = root.path().join("real");
    let svc = real.join("services/demo");
    std::fs::create_dir_all(&svc).expect("dirs");
    std::os::unix::fs::symlink(&real, root.path().join("state")).expect("symlink");
    let link = svc.join("current");
    let via = root.path().join("state/services/demo/current");
    let cases = [
        (format!("{}/demo-svc", link.display()), true),
        (format!("{}/bin/demo-svc", via.display()), true),
        (
            format!("/bin/sh -c 'exec {}/demo-svc --port 1'", via.display()),
            true,
        ),
        (format!("--config={}/etc/demo.toml", link.display()), true),
        ("/usr/bin/demo-svc".to_string(), false),
        (format!("{}/current-old/demo-svc", svc.display()), false),
        (
            format!("{}/releases/1.0.0-abc/demo-svc", svc.display()),
            false,
        ),
        ("demo-svc".to_string(), false),
    ];
    for (word, want) in cases {
        assert_eq!(runs_through(&word, &link), want, "{word}");
    }
}

#[test]
fn job_results_say_what_happened() {
    let failed = st("failed", "failed", "exit-code", 0, 1, 3);
    let cases = [
        ("timeout", "TimeoutStartSec"),
        ("canceled", "canceled"),
        ("dependency", "depends on"),
        ("failed", "main process exited with status 3"),
        ("skipped", "\"skipped\""),
    ];
    for (result, want) in cases {
        let got = job_failure(result, &failed);
        assert!(got.contains(want), "{result}: {got}");
    }
}

/// Encodes `props` as the `a{sv}` a `GetAll` answers with.
fn get_all_answer(
    props: &[(&str, zbus::zvariant::Value<'_>)],
) -> zbus::zvariant::serialized::Data<'static, 'static> {
    use zbus::zvariant::serialized::Context;
    let dict: std::collections::HashMap<&str, &zbus::zvariant::Value<'_>> =
        props.iter().map(|(k, v)| (*k, v)).collect();
    zbus::zvariant::to_bytes(Context::new_dbus(zbus::zvariant::LE, 0), &dict).expect("encode")
}

#[test]
fn get_all_answers_decode_into_typed_properties() {
    use zbus::zvariant::Value;
    let unit = get_all_answer(&[
        ("LoadState", Value::from("loaded")),
        ("ActiveState", Value::from("active")),
        ("SubState", Value::from("running")),
        ("Description", Value::from("ignored")),
    ]);
    let (u, _): (client::UnitProps, _) = unit.deserialize().expect("unit props");
    assert_eq!(
        (
            u.load_state.as_str(),
            u.active_state.as_str(),
            u.sub_state.as_str()
        ),
        ("loaded", "active", "running")
    );
    let service = get_all_answer(&[
        ("Result", Value::from("exit-code")),
        ("NRestarts", Value::from(2u32)),
        ("ExecMainCode", Value::from(1i32)),
        ("ExecMainStatus", Value::from(3i32)),
    ]);
    let (s, _): (client::ServiceProps, _) = service.deserialize().expect("service props");
    assert_eq!(
        (
            s.result.as_str(),
            s.n_restarts,
            s.exec_main_code,
            s.exec_main_status
        ),
        ("exit-code", 2, 1, 3)
    );

    // A property the manager did not send is an error naming it, not an empty state.
    let partial = get_all_answer(&[
        ("LoadState", Value::from("loaded")),
        ("SubState", Value::from("running")),
    ]);
    let err = partial
        .deserialize::<client::UnitProps>()
        .expect_err("ActiveState is missing");
    assert!(err.to_string().contains("ActiveState"), "{err}");
    // So is one of the wrong type.
    let wrong = get_all_answer(&[
        ("Result", Value::from("success")),
        ("NRestarts", Value::from("two")),
        ("ExecMainCode", Value::from(0i32)),
        ("ExecMainStatus", Value::from(0i32)),
    ]);
    assert!(wrong.deserialize::<client::ServiceProps>().is_err());
}
