//! Which releases this host accepts before touching anything (S8): a signature by a pinned key
//! where signing is required, a declared size under the cap, and no downgrade except an
//! explicit rollback to a release this host ran before.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::SystemTime;

use rollgate_proto::pb;
use rollgate_proto::signing::{self, PublicKey};

use crate::config::Config;

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

/// This host's rules for releases, from its config.
#[derive(Debug, Clone)]
pub struct Trust {
    host_id: String,
    max_artifact_bytes: u64,
    keys: BTreeMap<String, Keys>,
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
        }
    }

    /// Checks the declared size and the signature of `release` of `service` at `now`. The
    /// error is the whole refusal, for an operator: which host, which release, what is
    /// wrong, what to do.
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
        signing::verify(keys, service, release, now)
            .map_err(|e| format!("{what}: {e}. Nothing was changed"))
    }

    /// The downgrade rule: an order for a release older than `current` (version, sha256) is
    /// refused unless it is an explicit rollback to a release this host ran before
    /// (`ran_before`). Versions compare as dotted numbers (`1.10.0` > `1.9.2`); when either
    /// is not dotted numeric (`2.0.0-rc1`, a git hash) they have no order, and going back to
    /// a release this host ran before counts as a downgrade, while a release never run here
    /// counts as new.
    pub fn check_downgrade(
        &self,
        service: &str,
        release: &pb::Release,
        rollback: bool,
        current: Option<(&str, &str)>,
        ran_before: bool,
    ) -> Result<(), String> {
        let Some((cur_version, cur_sha)) = current else {
            return Ok(());
        };
        if release.version == cur_version && release.sha256 == cur_sha {
            return Ok(());
        }
        let downgrade = match compare_versions(&release.version, cur_version) {
            Some(Ordering::Less) => true,
            Some(_) => false,
            None => ran_before,
        };
        if !downgrade {
            return Ok(());
        }
        let what = format!(
            "host {} refuses {service} {} (sha256 {}): it is older than {cur_version}, which \
             runs here",
            self.host_id,
            release.version,
            short(&release.sha256)
        );
        if !rollback {
            return Err(format!(
                "{what}, and the order is not a rollback. A downgrade happens only through an \
                 explicit rollback (`rollgate rollout rollback ROLLOUT`) to a release this host \
                 ran before. Nothing was changed; roll back the rollout that installed \
                 {cur_version}, or publish the fix as a version above {cur_version}"
            ));
        }
        if !ran_before {
            return Err(format!(
                "{what}, and this host never ran that release, so it cannot be a rollback \
                 target here. Nothing was changed; publish the fix as a version above \
                 {cur_version}"
            ));
        }
        Ok(())
    }
}

fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// Compares dotted numeric versions (`1.10` > `1.9`, `2` == `2.0.0`); `None` when either is
/// not dotted numeric.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let parse = |v: &str| -> Option<Vec<u64>> { v.split('.').map(|p| p.parse().ok()).collect() };
    let (a, b) = (parse(a)?, parse(b)?);
    let n = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    Some(
        (0..n)
            .map(|i| at(&a, i).cmp(&at(&b, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        use Ordering::*;
        let table = [
            ("1.10.0", "1.9.2", Some(Greater)),
            ("1.0.0", "2.0.0", Some(Less)),
            ("2", "2.0.0", Some(Equal)),
            ("2.0.1", "2.0", Some(Greater)),
            ("10", "9", Some(Greater)),
            ("2.0.0-rc1", "1.0.0", None),
            ("abc", "1", None),
            ("1..2", "1.2", None),
        ];
        for (a, b, want) in table {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        }
    }

    fn trust() -> Trust {
        Trust {
            host_id: "web-1".into(),
            max_artifact_bytes: 100,
            keys: BTreeMap::new(),
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
        // (release, rollback, ran_before, accepted)
        let table = [
            (rel("3.0.0", 'c'), false, false, true),
            (rel("2.0.0", 'c'), false, false, true),
            (rel("1.0.0", 'a'), false, true, false),
            (rel("1.0.0", 'a'), true, false, false),
            (rel("1.0.0", 'a'), true, true, true),
            (rel("x1", 'a'), false, false, true),
            (rel("x1", 'a'), false, true, false),
            (rel("x1", 'a'), true, true, true),
        ];
        for (r, rollback, ran, ok) in table {
            let got = t.check_downgrade("demo", &r, rollback, cur, ran);
            assert_eq!(
                got.is_ok(),
                ok,
                "{} rollback={rollback} ran={ran}: {got:?}",
                r.version
            );
        }
        assert!(t
            .check_downgrade("demo", &rel("1.0.0", 'a'), false, None, false)
            .is_ok());
        let e = t
            .check_downgrade("demo", &rel("1.0.0", 'a'), false, cur, true)
            .expect_err("downgrade");
        assert!(e.starts_with("host web-1 refuses demo 1.0.0"), "{e}");
        assert!(e.contains("rollgate rollout rollback"), "{e}");
    }

    #[test]
    fn size_cap() {
        let t = trust();
        let mut r = rel("1.0.0", 'a');
        r.size = 101;
        let e = t
            .check_release("demo", &r, SystemTime::now())
            .expect_err("oversized");
        assert!(e.contains("max_artifact_bytes (100 bytes)"), "{e}");
        r.size = 100;
        assert!(t.check_release("demo", &r, SystemTime::now()).is_ok());
    }
}
