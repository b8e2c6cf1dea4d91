//! Validation of names that become etcd keys and file names: host ids, service names, versions,
//! rollout ids.

use std::fmt;

use thiserror::Error;

/// A name that cannot be used safely as a key segment or a file name.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what} {value:?} is not valid: {why}. Use 1-128 characters from a-z, A-Z, 0-9, '.', '_', '-', not starting with '.' or '-'")]
pub struct InvalidName {
    /// What the name is for ("host id", "service name", "version").
    pub what: &'static str,
    /// The offending value.
    pub value: String,
    /// Which rule it breaks.
    pub why: &'static str,
}

/// Checks that `value` is a safe name (for keys and paths). `what` names it in the error.
pub fn check(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let fail = |why| {
        Err(InvalidName {
            what,
            value: value.to_string(),
            why,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > 128 {
        return fail("it is longer than 128 characters");
    }
    if value.starts_with('.') || value.starts_with('-') {
        return fail("it starts with '.' or '-'");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return fail("it contains a character outside a-z, A-Z, 0-9, '.', '_', '-'");
    }
    Ok(())
}

/// Checks a lowercase hex sha256 digest.
pub fn check_sha256(value: &str) -> Result<(), InvalidName> {
    if value.len() == 64 && value.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        Err(InvalidName {
            what: "sha256",
            value: value.to_string(),
            why: "it must be 64 lowercase hex characters",
        })
    }
}

/// A rollout id as rollgate generates them: `r-` and 16 lowercase hex digits (64 random bits),
/// or 6 for ids made before 64-bit ids. Anything else a peer sends is not a rollout (S9): it
/// never becomes part of an etcd key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RolloutId(String);

impl RolloutId {
    /// Checks the grammar of a rollout id.
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let hex = value.strip_prefix("r-").unwrap_or("");
        let digits = hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        if digits && matches!(hex.len(), 6 | 16) {
            return Ok(RolloutId(value.to_string()));
        }
        Err(InvalidName {
            what: "rollout id",
            value: value.to_string(),
            why: "rollout ids are 'r-' and 16 (or, for old ones, 6) lowercase hex digits",
        })
    }
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RolloutId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web-1", "a", "v2.0.1", "demo_svc", "A.b-C_9"] {
            assert_eq!(check("x", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "-x",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(check("x", bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn rollout_ids() {
        for ok in ["r-0123456789abcdef", "r-a1b2c3"] {
            assert_eq!(
                RolloutId::parse(ok).map(|r| r.to_string()),
                Ok(ok.to_string())
            );
        }
        for bad in [
            "",
            "r-",
            "r-a1b2c3/hosts/web-1",
            "r-0123456789abcdef/hosts/h",
            "r-0123456789ABCDEF",
            "r-0123456789abcde",
            "x-0123456789abcdef",
            "r-../../x",
        ] {
            assert!(RolloutId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn digests() {
        assert!(check_sha256(&"a".repeat(64)).is_ok());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        assert!(check_sha256("abc").is_err());
    }
}
