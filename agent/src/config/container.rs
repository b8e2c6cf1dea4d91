//! Validation of the container backend's settings in a `[[services]]` table.

use std::path::PathBuf;

use rollgate_proto::names;

use super::checks::stray;
use super::error::{field_err, ConfigError};
use super::raw::RawService;
use super::types::{ContainerSettings, PortMap, RestartPolicy, DEFAULT_CONTAINER_SOCKET};

impl RawService {
    /// Refuses the container backend's keys on another backend.
    pub(super) fn no_container_keys(
        &self,
        at: &dyn Fn(&str) -> String,
        owner: &str,
    ) -> Result<(), ConfigError> {
        let fix = "it is only for backend = \"container\"; remove it";
        for (key, set) in [
            ("socket", self.socket.is_some()),
            ("container_name", self.container_name.is_some()),
            ("ports", self.ports.is_some()),
            ("mounts", self.mounts.is_some()),
            ("restart_policy", self.restart_policy.is_some()),
            ("command", self.command.is_some()),
            ("registry_auth", self.registry_auth.is_some()),
        ] {
            stray(at(key), set, owner, fix)?;
        }
        Ok(())
    }

    /// The container backend's settings, checked.
    pub(super) fn container_settings(
        &self,
        at: &dyn Fn(&str) -> String,
    ) -> Result<ContainerSettings, ConfigError> {
        let owner = "the container backend";
        let fix = "the engine runs the image: set the command with `command`, the stop grace with `stop_timeout`";
        stray(at("args"), self.args.is_some(), owner, fix)?;
        stray(
            at("restart_delay"),
            self.restart_delay.is_some(),
            owner,
            fix,
        )?;
        for (key, set) in [
            ("unit", self.unit.is_some()),
            ("manager", self.manager.is_some()),
            ("bus", self.bus.is_some()),
        ] {
            stray(
                at(key),
                set,
                owner,
                "it is only for backend = \"systemd\"; remove it",
            )?;
        }
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINER_SOCKET));
        if !socket.is_absolute() {
            return Err(field_err(
                at("socket"),
                "must be an absolute path, e.g. \"/var/run/docker.sock\" or \"/run/podman/podman.sock\"",
            ));
        }
        let container_name = self
            .container_name
            .clone()
            .unwrap_or_else(|| self.name.clone());
        names::check("container name", &container_name)
            .map_err(|e| field_err(at("container_name"), e.to_string()))?;
        let ports = self
            .ports
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, p)| {
                let parsed = p.split_once(':').and_then(|(h, c)| {
                    Some(PortMap {
                        host: h.parse().ok()?,
                        container: c.parse().ok()?,
                    })
                });
                parsed.ok_or_else(|| {
                    field_err(
                        at(&format!("ports[{j}]")),
                        format!("{p:?} is not host:container (tcp), e.g. \"18081:8080\""),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mounts = self.mounts.clone().unwrap_or_default();
        for (j, m) in mounts.iter().enumerate() {
            let parts: Vec<&str> = m.split(':').collect();
            let ok = matches!(parts.len(), 2 | 3)
                && parts[..2].iter().all(|p| p.starts_with('/'))
                && parts.get(2).is_none_or(|o| matches!(*o, "ro" | "rw"));
            if !ok {
                return Err(field_err(
                    at(&format!("mounts[{j}]")),
                    format!("{m:?} is not an absolute host:container[:ro|rw] bind, e.g. \"/srv/data:/data:ro\""),
                ));
            }
        }
        let restart_policy = match self.restart_policy.as_deref() {
            None | Some("no") => RestartPolicy::No,
            Some("on-failure") => RestartPolicy::OnFailure,
            Some("always") => RestartPolicy::Always,
            Some("unless-stopped") => RestartPolicy::UnlessStopped,
            Some(other) => {
                return Err(field_err(
                    at("restart_policy"),
                    format!("{other:?} is not a restart policy; use \"no\", \"on-failure\", \"always\" or \"unless-stopped\""),
                ))
            }
        };
        if self.command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(field_err(
                at("command"),
                "is empty; remove it to run the image's own command, or give one, e.g. [\"/app\", \"--port\", \"8080\"]",
            ));
        }
        if self
            .registry_auth
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err(field_err(
                at("registry_auth"),
                "must be an absolute path, e.g. \"/etc/rollgate/registry-auth.json\"",
            ));
        }
        Ok(ContainerSettings {
            socket,
            container_name,
            ports,
            mounts,
            restart_policy,
            command: self.command.clone(),
            registry_auth: self.registry_auth.clone(),
        })
    }
}
