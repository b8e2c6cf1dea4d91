//! The `[signing]` table.

use super::*;
use rollgate_proto::signing::SigningKey;

const BASE: &str = r#"
host_id = "web-1"
coordinator = "http://127.0.0.1:7443"
state_dir = "/var/lib/rollgate-agent"
[[services]]
name = "demo"
backend = "process"
binary = "demo-svc"
SERVICE_KEYS
"#;

/// A config with `top` (top-level keys, then tables) and `service_keys` in the service.
fn text(top: &str, service_keys: &str) -> String {
    let (keys, tables) = top.split_at(top.find('[').unwrap_or(top.len()));
    format!(
        "{keys}\n{}\n{tables}\n",
        BASE.replace("SERVICE_KEYS", service_keys)
    )
}

#[test]
fn keys_load_and_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("key");
    let pub_path = dir.path().join("k.pub");
    std::fs::write(&pub_path, key.public().to_pem()).expect("write");
    let plain = Config::parse(&text("", "")).expect("valid");
    assert_eq!(plain.max_artifact_bytes, DEFAULT_MAX_ARTIFACT_BYTES);
    assert_eq!(plain.signing, SigningConfig::default());
    assert_eq!(plain.services[0].signing_keys, None);

    let keys = format!("[\"{}\"]", pub_path.display());
    let c = Config::parse(&text(
        &format!(
            "max_artifact_bytes = 1000\n[signing]\nrequired = true\nkeys = {keys}\n\
             fleet = \"prod\"\nenv = \"staging\""
        ),
        &format!("signing_keys = {keys}"),
    ))
    .expect("valid");
    assert_eq!(c.max_artifact_bytes, 1000);
    assert!(c.signing.required);
    assert_eq!(c.signing.keys, vec![key.public().clone()]);
    assert_eq!(c.services[0].signing_keys, Some(vec![key.public().clone()]));
    assert_eq!(
        c.signing.scope,
        rollgate_proto::signing::Scope::new("prod", "staging")
    );
    assert_eq!(c.rollback_window, DEFAULT_ROLLBACK_WINDOW);
    assert_eq!(c.sources, SourceRules::default());
}

#[test]
fn errors_name_the_field_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("key");
    let private = dir.path().join("k.key");
    std::fs::write(&private, key.to_pem()).expect("write");
    let public = dir.path().join("k.pub");
    std::fs::write(&public, key.public().to_pem()).expect("write");
    let cases = [
        (
            text("[signing]\nrequired = true", ""),
            "`signing.keys`",
            "no release could ever be installed",
        ),
        (
            text("[signing]\nkeys = [\"/nonexistent/k.pub\"]", ""),
            "`signing.keys[0]`",
            "/nonexistent/k.pub",
        ),
        (
            text(
                &format!("[signing]\nkeys = [\"{}\"]", private.display()),
                "",
            ),
            "`signing.keys[0]`",
            "BEGIN PUBLIC KEY",
        ),
        (
            text("", "signing_keys = []"),
            "`services[0].signing_keys`",
            "is empty",
        ),
        (
            text("max_artifact_bytes = 0", ""),
            "`max_artifact_bytes`",
            "more than 0",
        ),
        (
            text("[signing]\nrequire = true", ""),
            "require",
            "unknown field",
        ),
        (
            text(&format!("[signing]\nkeys = [\"{}\"]", public.display()), ""),
            "`signing.fleet`",
            "set fleet = \"FLEET\"",
        ),
        (
            text("rollback_window = 0", ""),
            "`rollback_window`",
            "must be 1 to",
        ),
        (
            format!(
                "allowed_sources = [\"https://x.example\"]\n{}",
                BASE.replace("SERVICE_KEYS", "")
            ),
            "`allowed_sources[0]`",
            "ending in",
        ),
    ];
    for (text, field, fix) in cases {
        let err = Config::parse(&text).expect_err(field).to_string();
        assert!(err.contains(field), "{err:?} should name {field}");
        assert!(err.contains(fix), "{err:?} should say {fix:?}");
    }
}
