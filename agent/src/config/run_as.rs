//! Who a process-backend service runs as (`user`, `group` of a `[[services]]` table): the
//! names are resolved to ids once, when the config loads, so a typo stops the agent at start
//! rather than the service at its first update.

use nix::unistd::{Group, User};

use super::error::{field_err, ConfigError};

/// The unprivileged identity a process-backend service runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name, as configured (for the log).
    pub user: String,
    /// Its uid.
    pub uid: u32,
    /// The group the process runs with: `group`, or the user's primary group.
    pub gid: u32,
}

/// The identity `user`/`group` name for service table `table` (e.g. `services[0]`), checked.
pub(super) fn resolve(
    table: &str,
    backend: &str,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<RunAs>, ConfigError> {
    let at = |f: &str| format!("{table}.{f}");
    if backend != "process" && (user.is_some() || group.is_some()) {
        let field = if user.is_some() { "user" } else { "group" };
        return Err(field_err(
            at(field),
            format!(
                "is only for backend = \"process\"; a {backend} service's user is set where it \
                 runs (the unit's User=/Group=, the image's USER)"
            ),
        ));
    }
    let Some(name) = user else {
        return match group {
            Some(_) => Err(field_err(
                at("group"),
                "is set without `user`; name the user the service runs as too, e.g. \
                 user = \"demo\"",
            )),
            None => Ok(None),
        };
    };
    let found = User::from_name(name)
        .map_err(|e| field_err(at("user"), format!("cannot look up user {name:?}: {e}")))?;
    let Some(u) = found else {
        return Err(field_err(
            at("user"),
            format!(
                "there is no user {name:?} on this host; create it (useradd --system \
                 --no-create-home {name}) or fix the name in the [[services]] table"
            ),
        ));
    };
    let gid = match group {
        None => u.gid.as_raw(),
        Some(g) => {
            let found = Group::from_name(g)
                .map_err(|e| field_err(at("group"), format!("cannot look up group {g:?}: {e}")))?;
            found
                .ok_or_else(|| {
                    field_err(
                        at("group"),
                        format!(
                            "there is no group {g:?} on this host; create it (groupadd \
                             --system {g}) or fix the name in the [[services]] table"
                        ),
                    )
                })?
                .gid
                .as_raw()
        }
    };
    Ok(Some(RunAs {
        user: name.to_string(),
        uid: u.uid.as_raw(),
        gid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_errors_name_the_table_and_the_fix() {
        let nobody = resolve("services[0]", "process", Some("nobody"), None)
            .expect("nobody exists")
            .expect("set");
        assert_eq!(nobody.uid, 65534);
        let root_group = resolve("services[0]", "process", Some("nobody"), Some("root"))
            .expect("root group exists")
            .expect("set");
        assert_eq!(root_group.gid, 0);
        assert_eq!(
            resolve("services[0]", "process", None, None).expect("ok"),
            None
        );
        for (backend, user, group, want) in [
            (
                "process",
                Some("no-such-user-rg"),
                None,
                "`services[2].user`: there is no user \"no-such-user-rg\" on this host; create it",
            ),
            (
                "process",
                Some("nobody"),
                Some("no-such-group-rg"),
                "`services[2].group`: there is no group \"no-such-group-rg\"",
            ),
            ("process", None, Some("root"), "is set without `user`"),
            (
                "systemd",
                Some("nobody"),
                None,
                "`services[2].user`: is only for backend = \"process\"",
            ),
        ] {
            let e = resolve("services[2]", backend, user, group)
                .expect_err(want)
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
