//! Which releases this host accepts before touching anything (S8): a source it allows, a
//! signature by a pinned key for this host's fleet (and environment) where signing is
//! required, a declared size under the cap, and no downgrade except an explicit rollback to
//! one of the releases this host ran just before the current one (`rollback_window`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::SystemTime;

use rollgate_proto::pb;
use rollgate_proto::signing::{self, PublicKey, Scope};

use crate::config::{Config, SourceRules};

/// The keys one service's releases are checked against.
#[derive(Debug, Clone, PartialEq)]
enum Keys {
    /// No keys pinned: signatures are not checked.
    None,
    /// A signature is checked when present; unsigned releases pass (turning signing on).
    IfSigned(Vec<PublicKey>),
    /// A valid signature by one of these is required.
    Required(Vec<PublicKey>),
}

/// How an ordered release stands to the one running, by semver precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A higher version: an update.
    Up,
    /// A lower version, or the same version with other bytes: a downgrade.
    Down,
}

/// What this host's journal says about an ordered release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Past {
    /// The host committed to this exact release (version and sha256) at some time.
    pub ran_before: bool,
    /// It is among the `rollback_window` releases committed just before the current one.
    pub in_window: bool,
}

/// This host's rules for releases, from its config.
#[derive(Debug, Clone)]
pub struct Trust {
    host_id: String,
    max_artifact_bytes: u64,
    keys: BTreeMap<String, Keys>,
    scope: Scope,
    sources: SourceRules,
    rollback_window: u32,
}

impl Trust {
    /// The rules `config` sets, per configured service.
    pub fn new(config: &Config) -> Trust {
        let fleet = &config.signing;
        let keys = config
            .services
            .iter()
            .map(|s| {
                let keys = match &s.signing_keys {
                    Some(own) => Keys::Required(own.clone()),
                    None if fleet.required => Keys::Required(fleet.keys.clone()),
                    None if !fleet.keys.is_empty() => Keys::IfSigned(fleet.keys.clone()),
                    None => Keys::None,
                };
                (s.name.clone(), keys)
            })
            .collect();
        Trust {
            host_id: config.host_id.clone(),
            max_artifact_bytes: config.max_artifact_bytes,
            keys,
            scope: fleet.scope.clone(),
            sources: config.sources.clone(),
            rollback_window: config.rollback_window,
        }
    }

    /// How many releases back an explicit rollback may go.
    pub fn rollback_window(&self) -> u32 {
        self.rollback_window
    }

    /// Checks the source, the declared size and the signature of `release` of `service` at
    /// `now`. The error is the whole refusal, for an operator: which host, which release,
    /// what is wrong, what to do.
    pub fn check_release(
        &self,
        service: &str,
        release: &pb::Release,
        now: SystemTime,
    ) -> Result<(), String> {
        let what = format!(
            "host {} refuses {service} {} (sha256 {}, {} bytes)",
            self.host_id,
            release.version,
            short(&release.sha256),
            release.size
        );
        if let Err(refusal) = self.sources.check(&release.source) {
            // The source is named only by its scheme: it may be an internal address.
            return Err(format!(
                "{what}: its source ({}) is not allowed here: {}. Nothing was fetched",
                scheme(&release.source),
                refusal.explain()
            ));
        }
        if release.size > self.max_artifact_bytes {
            return Err(format!(
                "{what}: it is larger than this host's max_artifact_bytes ({} bytes), so it was \
                 not downloaded. Nothing was changed; if the release really is that large, raise \
                 max_artifact_bytes in the agent's config",
                self.max_artifact_bytes
            ));
        }
        let keys = match self.keys.get(service) {
            None | Some(Keys::None) => return Ok(()),
            Some(Keys::IfSigned(_)) if release.signature.is_none() => return Ok(()),
            Some(Keys::IfSigned(k) | Keys::Required(k)) => k,
        };
        signing::verify(keys, &self.scope, service, release, now)
            .map_err(|e| format!("{what}: {e}. Nothing was changed"))
    }

    /// The downgrade rule. Versions are ordered by semver precedence ([`version_order`]); a
    /// version that cannot be ordered is refused. An order for a lower version than
    /// `current` (version, sha256), or for the same version with other bytes, is refused
    /// unless it is an explicit rollback (`rollback`) to one of the releases this host ran
    /// just before the current one (`past.in_window`). When the current version itself
    /// cannot be ordered (installed before this rule), a release this host ran before counts
    /// as a downgrade and one it never ran as new.
    pub fn check_downgrade(
        &self,
        service: &str,
        release: &pb::Release,
        rollback: bool,
        current: Option<(&str, &str)>,
        past: Past,
    ) -> Result<(), String> {
        let who = format!(
            "host {} refuses {service} {} (sha256 {})",
            self.host_id,
            release.version,
            short(&release.sha256)
        );
        if parse_version(&release.version).is_none() {
            return Err(format!(
                "{who}: its version cannot be ordered (rollgate orders releases by semver, e.g. \
                 1.4.2 or 1.5.0-rc.1; a git hash or a date is not a version), so this host \
                 cannot tell an update from a downgrade. Nothing was changed; publish it with a \
                 semver version"
            ));
        }
        let Some((cur_version, cur_sha)) = current else {
            return Ok(());
        };
        if release.version == cur_version && release.sha256 == cur_sha {
            return Ok(());
        }
        let direction = match version_order(&release.version, cur_version) {
            Some(Ordering::Greater) => Direction::Up,
            Some(_) => Direction::Down,
            None if past.ran_before => Direction::Down,
            None => Direction::Up,
        };
        if direction == Direction::Up {
            return Ok(());
        }
        let what = format!("{who}: it is not newer than {cur_version}, which runs here");
        if !rollback {
            return Err(format!(
                "{what}, and the order is not a rollback. A downgrade happens only through an \
                 explicit rollback (`rollgate rollout rollback ROLLOUT`) to the release this \
                 host ran just before. Nothing was changed; roll back the rollout that \
                 installed {cur_version}, or publish the fix as a version above {cur_version}"
            ));
        }
        if !past.in_window {
            let window = self.rollback_window;
            let reach = if past.ran_before {
                "this host ran it, but longer ago than"
            } else {
                "this host never ran it, and a rollback goes back only"
            };
            return Err(format!(
                "{what}: {reach} {window} release(s) before the current one \
                 (rollback_window = {window}). Nothing was changed; publish the fix as a \
                 version above {cur_version}, or widen rollback_window in the agent's config"
            ));
        }
        Ok(())
    }
}

/// The scheme of a source, to name it without its address.
fn scheme(source: &str) -> &str {
    source.split_once(':').map_or("no scheme", |(s, _)| s)
}

fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// A release version as semver: `MAJOR.MINOR.PATCH[-PRE][+BUILD]`, where a plain `1` or
/// `1.2` reads as `1.0.0` / `1.2.0`. `None` when it is not one.
pub fn parse_version(v: &str) -> Option<semver::Version> {
    if let Ok(parsed) = semver::Version::parse(v) {
        return Some(parsed);
    }
    let numeric = !v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match v.split('.').count() {
        1 if numeric => semver::Version::parse(&format!("{v}.0.0")).ok(),
        2 if numeric => semver::Version::parse(&format!("{v}.0")).ok(),
        _ => None,
    }
}

/// Orders two versions by semver precedence (pre-releases below their release, build
/// metadata ignored); `None` when either cannot be parsed.
pub fn version_order(a: &str, b: &str) -> Option<Ordering> {
    Some(parse_version(a)?.cmp_precedence(&parse_version(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order_is_semver_precedence() {
        use Ordering::*;
        let table = [
            ("1.10.0", "1.9.2", Some(Greater)),
            ("1.0.0", "2.0.0", Some(Less)),
            ("2", "2.0.0", Some(Equal)),
            ("2.1", "2.0.9", Some(Greater)),
            ("10", "9", Some(Greater)),
            ("2.0.0-rc1", "2.0.0", Some(Less)),
            ("2.0.0-rc.2", "2.0.0-rc.10", Some(Less)),
            ("2.0.0-rc1", "1.0.0", Some(Greater)),
            ("1.0.0+abc", "1.0.0+def", Some(Equal)),
            ("abc", "1.0.0", None),
            ("3f2a9c1", "1.0.0", None),
            ("1..2", "1.2.0", None),
            ("v1.2.0", "1.2.0", None),
        ];
        for (a, b, want) in table {
            assert_eq!(version_order(a, b), want, "{a} vs {b}");
        }
    }

    fn trust() -> Trust {
        Trust {
            host_id: "web-1".into(),
            max_artifact_bytes: 100,
            keys: BTreeMap::new(),
            scope: Scope::new("prod", ""),
            sources: SourceRules::default(),
            rollback_window: 1,
        }
    }

    fn rel(version: &str, sha: char) -> pb::Release {
        pb::Release {
            version: version.into(),
            source: "store:".into(),
            sha256: sha.to_string().repeat(64),
            size: 10,
            signature: None,
        }
    }

    #[test]
    fn downgrade_table() {
        let t = trust();
        let cur = Some(("2.0.0", "bbbb"));
        let (never, old, last) = (
            Past::default(),
            Past {
                ran_before: true,
                in_window: false,
            },
            Past {
                ran_before: true,
                in_window: true,
            },
        );
        // (release, rollback, past, accepted)
        let table = [
            (rel("3.0.0", 'c'), false, never, true),
            (rel("2.0.1-rc.1", 'c'), false, never, true),
            (rel("2.0.0", 'c'), false, never, false),
            (rel("2.0.0-rc1", 'c'), false, never, false),
            (rel("1.0.0", 'a'), false, last, false),
            (rel("1.0.0", 'a'), true, never, false),
            (rel("1.0.0", 'a'), true, old, false),
            (rel("1.0.0", 'a'), true, last, true),
            (rel("x1", 'a'), true, last, false),
            (rel("3f2a9c1", 'a'), false, never, false),
        ];
        for (r, rollback, past, ok) in table {
            let got = t.check_downgrade("demo", &r, rollback, cur, past);
            assert_eq!(
                got.is_ok(),
                ok,
                "{} rollback={rollback} {past:?}: {got:?}",
                r.version
            );
        }
        assert!(t
            .check_downgrade("demo", &rel("1.0.0", 'a'), false, None, never)
            .is_ok());
        let e = t
            .check_downgrade("demo", &rel("1.0.0", 'a'), false, cur, last)
            .expect_err("downgrade");
        assert!(e.starts_with("host web-1 refuses demo 1.0.0"), "{e}");
        assert!(e.contains("rollgate rollout rollback"), "{e}");
        let e = t
            .check_downgrade("demo", &rel("1.0.0", 'a'), true, cur, old)
            .expect_err("outside the window");
        assert!(e.contains("rollback_window = 1"), "{e}");
        // A current version from before the rule (not semver): only what ran here is older.
        let legacy = Some(("3f2a9c1", "bbbb"));
        assert!(t
            .check_downgrade("demo", &rel("1.0.0", 'a'), false, legacy, never)
            .is_ok());
        assert!(t
            .check_downgrade("demo", &rel("1.0.0", 'a'), false, legacy, last)
            .is_err());
    }

    #[test]
    fn size_cap_and_sources() {
        let t = trust();
        let mut r = rel("1.0.0", 'a');
        r.size = 101;
        let e = t
            .check_release("demo", &r, SystemTime::now())
            .expect_err("oversized");
        assert!(e.contains("max_artifact_bytes (100 bytes)"), "{e}");
        r.size = 100;
        assert!(t.check_release("demo", &r, SystemTime::now()).is_ok());
        r.source = "http://10.0.0.1:8500/v1/kv/secret".into();
        let e = t
            .check_release("demo", &r, SystemTime::now())
            .expect_err("internal url");
        assert!(e.contains("source (http) is not allowed"), "{e}");
        assert!(!e.contains("10.0.0.1"), "the address is not echoed: {e}");
    }
}
