use super::*;

const D: &str = "sha256:4010aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn classifies_the_engines_wordings() {
    // Verbatim texts of dockerd 20.10 and Podman 4.3 pulling from Debian's docker-registry
    // (tests/tests/registry_harness.rs; addresses and digests shortened).
    let table = [
        (
            "Head \"https://100.64.0.1:5000/v2/team/app/manifests/sha256:4010\": no basic auth credentials",
            PullFailure::Unauthorized,
        ),
        (
            "unauthorized: authentication required",
            PullFailure::Unauthorized,
        ),
        (
            "initializing source docker://100.64.0.1:5000/team/app@sha256:4010: reading manifest sha256:4010 in 100.64.0.1:5000/team/app: unauthorized: authentication required",
            PullFailure::Unauthorized,
        ),
        (
            "manifest for 100.64.0.1:5000/team/app@sha256:4010 not found: manifest unknown: manifest unknown",
            PullFailure::NotFound,
        ),
        (
            "initializing source docker://100.64.0.1:5000/team/nothing@sha256:4010: reading manifest sha256:4010 in 100.64.0.1:5000/team/nothing: manifest unknown: manifest unknown",
            PullFailure::NotFound,
        ),
        (
            "Get \"https://100.64.0.1:5000/v2/\": dial tcp 100.64.0.1:5000: connect: connection refused",
            PullFailure::Unreachable,
        ),
        (
            "initializing source docker://100.64.0.1:5000/team/app@sha256:4010: pinging container registry 100.64.0.1:5000: Get \"https://100.64.0.1:5000/v2/\": dial tcp 100.64.0.1:5000: connect: no route to host",
            PullFailure::Unreachable,
        ),
        (
            "Get \"https://100.64.0.1:5000/v2/\": x509: certificate signed by unknown authority",
            PullFailure::Untrusted,
        ),
        ("something else entirely", PullFailure::Other),
    ];
    for (text, want) in table {
        assert_eq!(classify(text), want, "{text}");
    }
}

#[test]
fn hints_name_the_registry_and_the_file() {
    let image = PinnedImage::parse(&format!("100.64.0.1:5000/team/app@{D}")).expect("pinned");
    let file = PathBuf::from("/etc/rollgate/registry-auth.json");
    let table = [
        (
            PullFailure::Unauthorized,
            AuthUsed::From(file.clone()),
            "refused the credentials in /etc/rollgate/registry-auth.json",
        ),
        (
            PullFailure::Unauthorized,
            AuthUsed::NoEntry(file.clone()),
            "has none for it",
        ),
        (
            PullFailure::Unauthorized,
            AuthUsed::NotConfigured,
            "set registry_auth",
        ),
        (
            PullFailure::NotFound,
            AuthUsed::NotConfigured,
            "has no image 100.64.0.1:5000/team/app@sha256:4010",
        ),
        (
            PullFailure::Unreachable,
            AuthUsed::NotConfigured,
            "cannot reach the registry 100.64.0.1:5000",
        ),
        (
            PullFailure::Untrusted,
            AuthUsed::NotConfigured,
            "/etc/docker/certs.d/100.64.0.1:5000/ca.crt",
        ),
    ];
    for (f, auth, want) in table {
        let h = hint(f, &image, &auth);
        assert!(h.contains(want), "{f:?}: {h}");
    }
}

#[test]
fn progress_sums_layers_and_stops_at_an_error() {
    let lines = [
        r#"{"status":"Pulling from team/app","id":"sha256:4010"}"#,
        r#"{"status":"Pulling fs layer","progressDetail":{},"id":"a1"}"#,
        r#"{"status":"Downloading","progressDetail":{"current":500000,"total":2000000},"id":"a1"}"#,
        r#"{"status":"Downloading","progressDetail":{"current":100000,"total":1000000},"id":"b2"}"#,
    ];
    let mut p = Progress::default();
    for l in lines {
        let msg: PullMessage = serde_json::from_str(l).expect("message");
        assert_eq!(p.apply(&msg), None);
    }
    // The first message's id is the image's, not a layer's.
    assert_eq!(p.summary(), "0 of 2 layers, 0.6 of 3.0 MB");
    let done: PullMessage =
        serde_json::from_str(r#"{"status":"Pull complete","progressDetail":{},"id":"a1"}"#)
            .expect("message");
    p.apply(&done);
    assert_eq!(p.summary(), "1 of 2 layers, 2.1 of 3.0 MB");
    let err: PullMessage = serde_json::from_str(
        r#"{"errorDetail":{"message":"unauthorized: authentication required"},"error":"unauthorized"}"#,
    )
    .expect("message");
    assert_eq!(
        p.apply(&err).as_deref(),
        Some("unauthorized: authentication required")
    );
}
