//! Validation of a `[[services.probes]]` table.

use super::checks::{check_bus, check_unit_name, load_ca_file, parse_manager, stray};
use super::error::{field_err, ConfigError};
use super::raw::RawProbe;
use super::types::{ProbeCheck, ProbeConfig, SystemdTarget};
use super::BuildFeature;

impl RawProbe {
    /// `own_unit` is the service's unit when it runs under systemd (a systemd probe's default).
    pub(super) fn validate(
        self,
        at: &str,
        own_unit: Option<&SystemdTarget>,
    ) -> Result<ProbeConfig, ConfigError> {
        let f = |name: &str| format!("{at}.{name}");
        let kind = self.kind.clone();
        let owner = format!("a {kind:?} probe");
        // Which fields each kind takes; any other field set is named as a mistake.
        let takes: &[&str] = match kind.as_str() {
            "http" => &["url", "expect_status", "expect_body", "ca_file"],
            "tcp" => &["address"],
            "exec" => &["command"],
            "systemd" => &["unit", "manager", "bus"],
            "grpc" => &["address", "grpc_service"],
            _ => &[],
        };
        let set = [
            ("url", self.url.is_some()),
            ("expect_status", self.expect_status.is_some()),
            ("expect_body", self.expect_body.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("address", self.address.is_some()),
            ("command", self.command.is_some()),
            ("unit", self.unit.is_some()),
            ("manager", self.manager.is_some()),
            ("bus", self.bus.is_some()),
            ("grpc_service", self.grpc_service.is_some()),
        ];
        if !takes.is_empty() {
            for (name, is_set) in set {
                if !takes.contains(&name) {
                    stray(f(name), is_set, &owner, "remove it")?;
                }
            }
        }
        let check = match kind.as_str() {
            "http" => {
                let Some(url) = self.url else {
                    return Err(field_err(
                        f("url"),
                        "an http probe needs a url, e.g. \"http://127.0.0.1:8080/health\"",
                    ));
                };
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|e| field_err(f("url"), format!("{url:?} is not a valid URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(field_err(
                        f("url"),
                        format!("{url:?} must start with http:// or https://"),
                    ));
                }
                if let Some(s) = self.expect_status {
                    if !(100..=599).contains(&s) {
                        return Err(field_err(
                            f("expect_status"),
                            format!("{s} is not an HTTP status; use e.g. 200"),
                        ));
                    }
                }
                if self.expect_body.as_deref() == Some("") {
                    return Err(field_err(
                        f("expect_body"),
                        "is empty, which every body contains; give the text to look for, or remove it",
                    ));
                }
                if let Some(path) = &self.ca_file {
                    load_ca_file(path).map_err(|problem| field_err(f("ca_file"), problem))?;
                }
                ProbeCheck::Http {
                    url,
                    expect_status: self.expect_status,
                    expect_body: self.expect_body,
                    ca_file: self.ca_file,
                }
            }
            "tcp" | "grpc" => {
                let Some(address) = self.address else {
                    return Err(field_err(
                        f("address"),
                        format!("a {kind} probe needs an address, e.g. \"127.0.0.1:8080\""),
                    ));
                };
                let port_ok = address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(field_err(
                        f("address"),
                        format!("{address:?} is not HOST:PORT, e.g. \"127.0.0.1:8080\""),
                    ));
                }
                if kind == "tcp" {
                    ProbeCheck::Tcp { address }
                } else {
                    ProbeCheck::Grpc {
                        address,
                        service: self.grpc_service.unwrap_or_default(),
                    }
                }
            }
            "exec" => {
                let command = self.command.unwrap_or_default();
                if command.first().is_none_or(|c| c.is_empty()) {
                    return Err(field_err(
                        f("command"),
                        "an exec probe needs a command, e.g. [\"/bin/sh\", \"-c\", \"test -e /run/ok\"]",
                    ));
                }
                ProbeCheck::Exec { command }
            }
            "systemd" => {
                super::require_built(
                    &f("kind"),
                    BuildFeature::Systemd,
                    "a systemd probe",
                    "check the service with an http, tcp or exec probe",
                )?;
                let target = match (self.unit, own_unit) {
                    (Some(unit), _) => {
                        check_unit_name(f("unit"), &unit)?;
                        let manager = match (self.manager.as_deref(), own_unit) {
                            (None, Some(own)) => own.manager,
                            (m, _) => parse_manager(f("manager"), m)?,
                        };
                        let bus = match (self.bus, own_unit) {
                            (None, Some(own)) if own.manager == manager => own.bus.clone(),
                            (b, _) => check_bus(f("bus"), b)?,
                        };
                        SystemdTarget { unit, manager, bus }
                    }
                    (None, Some(own)) => {
                        stray(f("manager"), self.manager.is_some(), "a systemd probe of the service's own unit", "remove it (the service's `manager` applies)")?;
                        stray(f("bus"), self.bus.is_some(), "a systemd probe of the service's own unit", "remove it (the service's `bus` applies)")?;
                        own.clone()
                    }
                    (None, None) => {
                        return Err(field_err(
                            f("unit"),
                            "a systemd probe of a service that systemd does not run needs the unit to check, e.g. unit = \"demo.service\"",
                        ))
                    }
                };
                ProbeCheck::Systemd(target)
            }
            other => {
                return Err(field_err(
                    f("kind"),
                    format!("{other:?} is not a probe kind; use \"http\", \"tcp\", \"exec\", \"systemd\" or \"grpc\""),
                ))
            }
        };
        if self.interval.is_zero() {
            return Err(field_err(
                f("interval"),
                "must be longer than 0s, e.g. \"1s\"",
            ));
        }
        if self.timeout.is_zero() {
            return Err(field_err(
                f("timeout"),
                "must be longer than 0s, e.g. \"1s\"",
            ));
        }
        for (name, v) in [
            ("success_threshold", self.success_threshold),
            ("failure_threshold", self.failure_threshold),
        ] {
            if v == 0 {
                return Err(field_err(
                    f(name),
                    "must be at least 1 (consecutive results)",
                ));
            }
        }
        Ok(ProbeConfig {
            check,
            interval: self.interval,
            timeout: self.timeout,
            success_threshold: self.success_threshold,
            failure_threshold: self.failure_threshold,
        })
    }
}
