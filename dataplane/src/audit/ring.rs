//! The audit events kept in memory on this pod: a bounded ring per tenant, read newest first
//! with filters and a cursor. The history store (issue 16) will keep them for longer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::event::Event;

/// Events kept per tenant; the oldest goes first.
pub const EVENTS_PER_TENANT: usize = 1_000;
/// Tenants whose rings are kept at once (the least recently written is dropped first).
pub const MAX_TENANTS: u64 = 10_000;
/// Events kept on the pod across every tenant; past it the pod's oldest event goes first. A
/// client without credentials can name any real tenant in a refused CONNECT, so without this
/// the rings of many tenants could hold `MAX_TENANTS` × `EVENTS_PER_TENANT` events.
pub const MAX_EVENTS: usize = 100_000;
/// The most events one page holds.
pub const MAX_PAGE: usize = 1_000;
/// A page's size when the request names none.
pub const DEFAULT_PAGE: usize = 100;

/// What a reader asks for: every field that is set must match.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    /// `<name>` or `<kind>/<name>` (`thing/sensor-1`).
    pub subject: Option<String>,
    pub action: Option<String>,
    pub reason: Option<String>,
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// Only events older than this cursor (the `id` of the last event of the previous page).
    pub before: Option<u64>,
    /// The most events to return.
    pub limit: usize,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        if let Some(subject) = &self.subject {
            let named = match subject.split_once('/') {
                Some((kind, name)) => e.subject_kind == Some(kind) && e.subject == name,
                None => &e.subject == subject,
            };
            if !named {
                return false;
            }
        }
        self.action
            .as_deref()
            .is_none_or(|a| a == e.action.as_str())
            && self.reason.as_deref().is_none_or(|r| r == e.reason)
            && self.since.is_none_or(|t| e.at >= t)
            && self.before.is_none_or(|b| e.id < b)
    }
}

/// One page of events, newest first.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Page {
    pub events: Vec<Event>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Every tenant's ring.
pub(crate) struct Rings {
    tenants: moka::sync::Cache<String, Arc<Mutex<VecDeque<Event>>>>,
    /// Every event pushed, oldest first, as (tenant, id), at most `max_events`: popping the
    /// front drops the pod's oldest event if its ring still holds it (a tenant's own cap or
    /// the eviction of its ring may have dropped it already).
    order: Mutex<VecDeque<(Arc<str>, u64)>>,
    per_tenant: usize,
    max_events: usize,
}

impl Default for Rings {
    fn default() -> Self {
        Self::with_limits(EVENTS_PER_TENANT, MAX_EVENTS)
    }
}

impl Rings {
    /// Rings of at most `per_tenant` events each and `max_events` in all.
    pub(crate) fn with_limits(per_tenant: usize, max_events: usize) -> Self {
        Self {
            tenants: moka::sync::Cache::builder()
                .max_capacity(MAX_TENANTS)
                .build(),
            order: Mutex::new(VecDeque::new()),
            per_tenant,
            max_events,
        }
    }

    /// Keeps `event` in its tenant's ring.
    pub(crate) fn push(&self, event: Event) {
        let (tenant, id): (Arc<str>, u64) = (event.tenant.as_str().into(), event.id);
        {
            let ring = self
                .tenants
                .get_with_by_ref(&event.tenant, || Arc::new(Mutex::new(VecDeque::new())));
            let mut ring = ring.lock();
            if ring.len() >= self.per_tenant {
                ring.pop_front();
            }
            ring.push_back(event);
        }
        // No ring is locked here while the order is; `query` locks a ring alone.
        let mut order = self.order.lock();
        order.push_back((tenant, id));
        while order.len() > self.max_events {
            let Some((tenant, id)) = order.pop_front() else {
                break;
            };
            if let Some(ring) = self.tenants.get(&*tenant) {
                let mut ring = ring.lock();
                if ring.front().is_some_and(|e| e.id == id) {
                    ring.pop_front();
                }
            }
        }
    }

    /// Events kept now, across every tenant.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tenants.iter().map(|(_, r)| r.lock().len()).sum()
    }

    /// The newest events of `tenant` that match `filter`, at most `filter.limit`.
    pub(crate) fn query(&self, tenant: &str, filter: &Filter) -> Page {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let Some(ring) = self.tenants.get(tenant) else {
            return Page {
                events: Vec::new(),
                next_cursor: None,
            };
        };
        let ring = ring.lock();
        let mut matching = ring.iter().rev().filter(|e| filter.matches(e));
        let events: Vec<Event> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        let next_cursor = events.last().filter(|_| more).map(|e| e.id.to_string());
        Page {
            events,
            next_cursor,
        }
    }
}
