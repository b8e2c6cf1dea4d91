//! Which backend runs a service: the one its config asks for.

use std::sync::Arc;

use crate::backend::container::ContainerBackend;
use crate::backend::process::ProcessBackend;
use crate::backend::systemd::SystemdBackend;
use crate::backend::Backend;
use crate::config::{Backend as BackendKind, ServiceConfig};
use crate::release::releases::ServiceDir;

/// The backend a service's config asks for.
pub fn for_service(dir: ServiceDir, cfg: Arc<ServiceConfig>) -> Box<dyn Backend> {
    match &cfg.backend {
        BackendKind::Process => Box::new(ProcessBackend::new(dir, cfg.clone())),
        BackendKind::Systemd(target) => Box::new(SystemdBackend::new(dir, target.clone())),
        BackendKind::Container(_) => Box::new(ContainerBackend::new(dir, cfg)),
    }
}
