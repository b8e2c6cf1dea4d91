//! Which backend runs a service: the one its config asks for.

use std::sync::Arc;

#[cfg(feature = "container")]
use crate::backend::container::ContainerBackend;
use crate::backend::process::ProcessBackend;
#[cfg(feature = "systemd")]
use crate::backend::systemd::SystemdBackend;
use crate::backend::Backend;
use crate::config::{Backend as BackendKind, ServiceConfig};
use crate::release::releases::ServiceDir;

/// The backend a service's config asks for. A backend this build left out never gets here:
/// the config is refused at load ([`crate::config::require_built`]).
pub fn for_service(dir: ServiceDir, cfg: Arc<ServiceConfig>) -> Box<dyn Backend> {
    match &cfg.backend {
        BackendKind::Process => Box::new(ProcessBackend::new(dir, cfg.clone())),
        #[cfg(feature = "systemd")]
        BackendKind::Systemd(target) => Box::new(SystemdBackend::new(dir, target.clone())),
        #[cfg(feature = "container")]
        BackendKind::Container(_) => Box::new(ContainerBackend::new(dir, cfg)),
        #[allow(unreachable_patterns)]
        other => unreachable!("{other:?}: refused at config load in a build without it"),
    }
}
