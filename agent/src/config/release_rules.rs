//! The release rules of the agent's config (S8): where releases may be fetched from, how far
//! back an explicit rollback may go, and which fleet and environment signatures must name.

use std::path::{Component, Path, PathBuf};

use rollgate_proto::signing::Scope;
use rollgate_proto::tls::{Identity, TlsConfig};

use super::error::{field_err, ConfigError};

/// Default rollback window: an explicit rollback goes back one release, to the one the host
/// ran immediately before the current one.
pub const DEFAULT_ROLLBACK_WINDOW: u32 = 1;
/// Largest rollback window; also how many committed releases the journal keeps per service.
pub const MAX_ROLLBACK_WINDOW: u32 = 16;
/// The coordinator's artifact store, the one source allowed by default.
pub const STORE_SOURCE: &str = "store:";

/// Where this host fetches releases from: everything else is refused before any I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRules {
    /// Allowed prefixes: `store:` and/or `https://host/path/` (ending in `/`).
    pub prefixes: Vec<String>,
    /// Directories a `file://` source may name a file under.
    pub file_dirs: Vec<PathBuf>,
    /// `source_ca_file`: PEM CA certificates trusted for `https://` sources besides the
    /// built-in roots (an artifact server with a private CA). Checked at load.
    pub ca_file: Option<PathBuf>,
}

impl Default for SourceRules {
    fn default() -> Self {
        SourceRules {
            prefixes: vec![STORE_SOURCE.to_string()],
            file_dirs: Vec::new(),
            ca_file: None,
        }
    }
}

/// Why a source is refused: a closed set, rendered for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRefusal {
    /// `store:` while the config's `allowed_sources` leaves it out.
    StoreNotAllowed,
    /// An http(s) URL under none of the allowed prefixes (or not a URL at all).
    UrlNotAllowed,
    /// A `file://` path outside `file_source_dirs` (or not a plain absolute path).
    FileNotAllowed,
    /// A scheme the agent never fetches.
    UnknownScheme,
}

impl SourceRefusal {
    /// What is wrong and the fix (the source itself is named by the caller).
    pub fn explain(&self) -> &'static str {
        match self {
            SourceRefusal::StoreNotAllowed => {
                "the coordinator's store is not in this host's allowed_sources; add \"store:\""
            }
            SourceRefusal::UrlNotAllowed => {
                "it is under none of this host's allowed_sources prefixes; publish the artifact \
                 under one, or add its prefix (e.g. \"https://artifacts.example/rel/\") to \
                 allowed_sources in the agent's config"
            }
            SourceRefusal::FileNotAllowed => {
                "file:// sources are allowed only under this host's file_source_dirs; copy the \
                 artifact there or push it with `rollgate artifact push`"
            }
            SourceRefusal::UnknownScheme => {
                "the agent fetches only \"store:\", https:// (or http://) URLs and file:// paths"
            }
        }
    }
}

impl SourceRules {
    /// Checks `source` against the rules, lexically and (for files) after resolving links.
    pub fn check(&self, source: &str) -> Result<(), SourceRefusal> {
        if source == STORE_SOURCE {
            return match self.prefixes.iter().any(|p| p == STORE_SOURCE) {
                true => Ok(()),
                false => Err(SourceRefusal::StoreNotAllowed),
            };
        }
        if let Some(path) = source.strip_prefix("file://") {
            return self.check_file(Path::new(path));
        }
        if source.starts_with("https://") || source.starts_with("http://") {
            // Compare the URL as it will be fetched (dot segments and userinfo resolved), so
            // `https://ok/rel/../admin` or `https://ok@evil/` cannot pass as under `https://ok/rel/`.
            let url = reqwest::Url::parse(source).map_err(|_| SourceRefusal::UrlNotAllowed)?;
            let fetched = url.as_str();
            let allowed = self
                .prefixes
                .iter()
                .any(|p| p != STORE_SOURCE && fetched.starts_with(p.as_str()));
            return if allowed && url.username().is_empty() && url.password().is_none() {
                Ok(())
            } else {
                Err(SourceRefusal::UrlNotAllowed)
            };
        }
        Err(SourceRefusal::UnknownScheme)
    }

    fn check_file(&self, path: &Path) -> Result<(), SourceRefusal> {
        let plain = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        let under = |p: &Path| self.file_dirs.iter().any(|d| p.starts_with(d));
        if !plain || !under(path) {
            return Err(SourceRefusal::FileNotAllowed);
        }
        // A link inside an allowed dir must not lead out of every allowed dir.
        match std::fs::canonicalize(path) {
            Ok(real) if !under(&real) => Err(SourceRefusal::FileNotAllowed),
            _ => Ok(()),
        }
    }
}

/// Parses `allowed_sources` and `file_source_dirs`.
pub fn source_rules(
    allowed: Option<Vec<String>>,
    file_dirs: Vec<PathBuf>,
    ca_file: Option<PathBuf>,
) -> Result<SourceRules, ConfigError> {
    if let Some(path) = &ca_file {
        super::load_ca_file(path).map_err(|problem| field_err("source_ca_file", problem))?;
    }
    let prefixes = allowed.unwrap_or_else(|| vec![STORE_SOURCE.to_string()]);
    for (i, p) in prefixes.iter().enumerate() {
        let url_ok = (p.starts_with("https://") || p.starts_with("http://"))
            && p.ends_with('/')
            && reqwest::Url::parse(p).is_ok_and(|u| u.as_str() == p && u.host().is_some());
        if p != STORE_SOURCE && !url_ok {
            return Err(field_err(
                format!("allowed_sources[{i}]"),
                format!(
                    "{p:?} is neither \"store:\" nor a normalized http(s) URL prefix ending in \
                     \"/\" (e.g. \"https://artifacts.example/releases/\"); file:// sources are \
                     allowed with file_source_dirs"
                ),
            ));
        }
    }
    let mut dirs = Vec::with_capacity(file_dirs.len());
    for (i, d) in file_dirs.into_iter().enumerate() {
        let plain = d.is_absolute()
            && d.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain {
            return Err(field_err(
                format!("file_source_dirs[{i}]"),
                format!("{} must be an absolute path without `..`", d.display()),
            ));
        }
        // Compare resolved paths later: keep the resolved dir when it exists.
        dirs.push(std::fs::canonicalize(&d).unwrap_or(d));
    }
    Ok(SourceRules {
        prefixes,
        file_dirs: dirs,
        ca_file,
    })
}

/// Checks `rollback_window`.
pub fn rollback_window(window: Option<u32>) -> Result<u32, ConfigError> {
    match window {
        None => Ok(DEFAULT_ROLLBACK_WINDOW),
        Some(w) if (1..=MAX_ROLLBACK_WINDOW).contains(&w) => Ok(w),
        Some(_) => Err(field_err(
            "rollback_window",
            format!(
                "must be 1 to {MAX_ROLLBACK_WINDOW} (1: a rollback goes back only to the release \
                 run immediately before)"
            ),
        )),
    }
}

/// The fleet and environment signatures must name: `[signing] fleet` (checked against the
/// host certificate's fleet when both are there) or the certificate's. Needed only when keys
/// are pinned.
pub fn signing_scope(
    fleet: Option<String>,
    env: Option<String>,
    tls: &TlsConfig,
    keys_pinned: bool,
) -> Result<Scope, ConfigError> {
    let env = env.unwrap_or_default();
    if !env.is_empty() {
        rollgate_proto::names::check("environment", &env)
            .map_err(|e| field_err("signing.env", e.to_string()))?;
    }
    let from_cert = cert_fleet(tls);
    let fleet = match (fleet, from_cert) {
        (Some(f), Some(c)) if f != c => {
            return Err(field_err(
                "signing.fleet",
                format!(
                    "is {f:?} but this host's certificate is for fleet {c:?}; remove the field \
                     or fix it"
                ),
            ))
        }
        (Some(f), _) | (None, Some(f)) => f,
        (None, None) if keys_pinned => {
            return Err(field_err(
                "signing.fleet",
                "is needed: signatures name the fleet they install in, and this host has no \
                 certificate to read it from; set fleet = \"FLEET\" under [signing]",
            ))
        }
        (None, None) => String::new(),
    };
    if !fleet.is_empty() {
        rollgate_proto::tls::check_fleet(&fleet)
            .map_err(|e| field_err("signing.fleet", e.to_string()))?;
    }
    Ok(Scope::new(&fleet, &env))
}

/// The fleet in this host's certificate, if it has one that can be read.
fn cert_fleet(tls: &TlsConfig) -> Option<String> {
    use rustls_pki_types::pem::PemObject as _;
    let pem = std::fs::read(tls.cert.as_ref()?).ok()?;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()?
        .ok()?;
    Identity::from_cert_der(&der).ok().map(|id| id.fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        std::fs::write(root.join("a.bin"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", root.join("out")).expect("link");
        let rules = source_rules(
            Some(vec![
                "store:".into(),
                "https://artifacts.example/rel/".into(),
            ]),
            vec![root.clone()],
            None,
        )
        .expect("rules");
        let f = |p: &str| format!("file://{}/{p}", root.display());
        use SourceRefusal::*;
        let table = [
            ("store:".to_string(), Ok(())),
            ("https://artifacts.example/rel/a.bin".into(), Ok(())),
            (
                "https://artifacts.example/rel/../admin".into(),
                Err(UrlNotAllowed),
            ),
            ("https://artifacts.example/other".into(), Err(UrlNotAllowed)),
            (
                "https://artifacts.example@10.0.0.1/rel/".into(),
                Err(UrlNotAllowed),
            ),
            ("http://169.254.169.254/latest/".into(), Err(UrlNotAllowed)),
            (f("a.bin"), Ok(())),
            (f("../x"), Err(FileNotAllowed)),
            (f("out"), Err(FileNotAllowed)),
            ("file:///etc/shadow".into(), Err(FileNotAllowed)),
            ("gopher://x".into(), Err(UnknownScheme)),
        ];
        for (source, want) in table {
            assert_eq!(rules.check(&source), want, "{source}");
        }
        assert_eq!(
            SourceRules::default().check("https://artifacts.example/rel/a"),
            Err(UrlNotAllowed)
        );
        let none = source_rules(Some(vec![]), vec![], None).expect("rules");
        assert_eq!(none.check("store:"), Err(StoreNotAllowed));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for p in [
            "https://a.example",
            "ftp://a/",
            "https://a.example/x/../",
            "file:///srv/",
        ] {
            let e = source_rules(Some(vec![p.into()]), vec![], None).expect_err(p);
            assert!(e.to_string().contains("allowed_sources[0]"), "{e}");
        }
        assert!(rollback_window(Some(0)).is_err());
        assert_eq!(rollback_window(None).expect("default"), 1);
    }
}
