//! A connection's places in its tenant's `maxConnections` and, when the thing declares one,
//! its thing's: held for the connection's life, whatever its protocol (MQTT, MQTT over
//! WebSocket, WebSocket streams).

use fleetward_policy::{Snapshot, Subject, SubjectKind};

use super::state::{Ingress, TenantSlot};
use crate::router::Router;

/// Counts one connection against its tenant and thing until dropped.
pub(crate) struct ConnectionSlots {
    _tenant: TenantSlot,
    /// Boxed: most things declare no limit, and this is kept for the whole connection.
    _thing: Option<Box<TenantSlot>>,
}

/// Which limit a connection is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotRefusal {
    /// The tenant holds its `limits.maxConnections`.
    Tenant(u32),
    /// The thing holds its own `maxConnections`.
    Thing(u32),
}

impl SlotRefusal {
    /// The refusals metric's label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Tenant(_) => "tenant_max_connections",
            Self::Thing(_) => "thing_max_connections",
        }
    }

    /// What happened and what to do, for a person.
    pub(crate) fn message(self, subject: &Subject) -> String {
        match self {
            Self::Tenant(max) => format!(
                "tenant {} holds its maxConnections ({max}); close a connection or raise the \
                 Tenant's limits.maxConnections",
                subject.tenant
            ),
            Self::Thing(max) => format!(
                "thing {}/{} holds its maxConnections ({max}); close one of its connections or \
                 raise the Thing's maxConnections",
                subject.tenant, subject.name
            ),
        }
    }
}

impl ConnectionSlots {
    /// Counts a connection of `subject`, unless its tenant or (a thing) itself is at its limit.
    /// A thing's own count starts when it declares a limit: connections made before are not
    /// counted against it.
    pub(crate) fn acquire<R: Router>(
        shared: &Ingress<R>,
        snapshot: &Snapshot,
        subject: &Subject,
    ) -> Result<Self, SlotRefusal> {
        let tenant_max = snapshot
            .tenant(&subject.tenant)
            .and_then(|t| t.limits.max_connections);
        let thing_max = match subject.kind {
            SubjectKind::Thing => snapshot
                .thing(&subject.tenant, &subject.name)
                .and_then(|t| t.max_connections),
            SubjectKind::User => None,
        };
        let tenant = shared
            .tenant_connections
            .acquire(&subject.tenant, tenant_max)
            .ok_or(SlotRefusal::Tenant(tenant_max.unwrap_or_default()))?;
        let thing = match thing_max {
            None => None,
            Some(max) => {
                // Tenant names are DNS labels: `/` cannot make two keys meet.
                let key = format!("{}/{}", subject.tenant, subject.name);
                let slot = shared
                    .thing_connections
                    .acquire(&key, Some(max))
                    .ok_or(SlotRefusal::Thing(max))?;
                Some(Box::new(slot))
            }
        };
        Ok(Self {
            _tenant: tenant,
            _thing: thing,
        })
    }
}
