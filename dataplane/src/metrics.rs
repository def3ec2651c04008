//! Counters of the front-end, rendered in the Prometheus text format for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

/// A tenant's message counters: atomics behind a read-mostly map, so counting a message takes
/// a shared lock and an atomic add, never a lock every session waits on.
#[derive(Debug, Default)]
struct TenantCounts {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
}

/// The front-end's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicI64,
    connections_total: AtomicU64,
    tenants: RwLock<BTreeMap<String, TenantCounts>>,
    refusals: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    snapshot_version: AtomicU64,
    bus: BusCounters,
    /// Sign-ins and refreshes by (operation, outcome).
    users: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Audit events written, and refusals held back by the per-subject limit.
    audit_emitted: AtomicU64,
    audit_suppressed: AtomicU64,
    audit_channel_dropped: AtomicU64,
}

/// The NATS bus's counters (absent from `/metrics` on a single pod).
#[derive(Debug, Default)]
struct BusCounters {
    configured: std::sync::atomic::AtomicBool,
    connected: std::sync::atomic::AtomicBool,
    disconnects: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
    dropped: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts `n` messages accepted from clients of `tenant`.
    pub(crate) fn messages_in(&self, tenant: &str, n: u64) {
        self.tenant(tenant, |c| {
            c.messages_in.fetch_add(n, Ordering::Relaxed);
        });
    }

    /// Counts `n` messages delivered to clients of `tenant`.
    pub(crate) fn messages_out(&self, tenant: &str, n: u64) {
        self.tenant(tenant, |c| {
            c.messages_out.fetch_add(n, Ordering::Relaxed);
        });
    }

    fn tenant(&self, tenant: &str, f: impl FnOnce(&TenantCounts)) {
        if let Some(c) = self.tenants.read().get(tenant) {
            f(c);
            return;
        }
        f(self.tenants.write().entry(tenant.to_owned()).or_default());
    }

    /// Counts a refusal: `what` is connect/publish/subscribe/limit, `reason` a stable label.
    pub(crate) fn refused(&self, what: &'static str, reason: &'static str) {
        *self.refusals.lock().entry((what, reason)).or_default() += 1;
    }

    /// Counts a sign-in by outcome (`ok`, `refused`, `rate_limited`, `unavailable`).
    pub(crate) fn user_login(&self, outcome: &'static str) {
        *self.users.lock().entry(("login", outcome)).or_default() += 1;
    }

    /// Counts a refresh by outcome (`ok`, `refused`, `replayed`, `unavailable`).
    pub(crate) fn user_refresh(&self, outcome: &'static str) {
        *self.users.lock().entry(("refresh", outcome)).or_default() += 1;
    }

    /// How many sign-ins (`login`) or refreshes (`refresh`) ended with `outcome`.
    pub fn user_tokens(&self, operation: &str, outcome: &str) -> u64 {
        self.users
            .lock()
            .iter()
            .filter(|((o, r), _)| *o == operation && *r == outcome)
            .map(|(_, n)| *n)
            .sum()
    }

    /// How often `what` was refused for `reason`.
    pub fn refusals(&self, what: &str, reason: &str) -> u64 {
        self.refusals
            .lock()
            .iter()
            .filter(|((w, r), _)| *w == what && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    pub(crate) fn audit_emitted(&self) {
        self.audit_emitted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn audit_suppressed(&self) {
        self.audit_suppressed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn audit_channel_dropped(&self) {
        self.audit_channel_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Audit events written, and refusals the per-subject limit held back.
    pub fn audit_events(&self) -> (u64, u64) {
        (
            self.audit_emitted.load(Ordering::Relaxed),
            self.audit_suppressed.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn set_snapshot_version(&self, v: u64) {
        self.snapshot_version.store(v, Ordering::Relaxed);
    }

    /// Records whether the bus is connected to NATS now; a change to "not" counts an outage.
    pub(crate) fn bus_connected(&self, connected: bool) {
        self.bus.configured.store(true, Ordering::Relaxed);
        let was = self.bus.connected.swap(connected, Ordering::SeqCst);
        if was && !connected {
            self.bus.disconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn bus_configured(&self) {
        self.bus.configured.store(true, Ordering::Relaxed);
    }

    pub(crate) fn bus_published(&self) {
        self.bus.published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bus_received(&self) {
        self.bus.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message the bus did not carry (`reason` a stable label).
    pub(crate) fn bus_dropped(&self, reason: &'static str) {
        *self.bus.dropped.lock().entry(reason).or_default() += 1;
    }

    /// Whether the bus is connected to NATS now.
    pub fn bus_is_connected(&self) -> bool {
        self.bus.connected.load(Ordering::SeqCst)
    }

    /// How often the bus lost NATS.
    pub fn bus_disconnects(&self) -> u64 {
        self.bus.disconnects.load(Ordering::Relaxed)
    }

    /// Messages sent to and received from other pods.
    pub fn bus_messages(&self) -> (u64, u64) {
        (
            self.bus.published.load(Ordering::Relaxed),
            self.bus.received.load(Ordering::Relaxed),
        )
    }

    /// Messages the bus did not carry for `reason`.
    pub fn bus_drops(&self, reason: &str) -> u64 {
        self.bus
            .dropped
            .lock()
            .iter()
            .filter(|(r, _)| **r == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    fn render_bus(&self, out: &mut String) {
        if !self.bus.configured.load(Ordering::Relaxed) {
            return;
        }
        let b = &self.bus;
        let _ = writeln!(
            out,
            "# HELP fleetward_bus_connected Whether the bus is connected to NATS (0 during an outage).\n# TYPE fleetward_bus_connected gauge\nfleetward_bus_connected {}\n# HELP fleetward_bus_disconnects_total Times the bus lost NATS.\n# TYPE fleetward_bus_disconnects_total counter\nfleetward_bus_disconnects_total {}\n# HELP fleetward_bus_published_total Messages sent to other pods.\n# TYPE fleetward_bus_published_total counter\nfleetward_bus_published_total {}\n# HELP fleetward_bus_received_total Messages from other pods delivered locally.\n# TYPE fleetward_bus_received_total counter\nfleetward_bus_received_total {}\n# HELP fleetward_bus_dropped_total Messages the bus did not carry, by reason.\n# TYPE fleetward_bus_dropped_total counter",
            u8::from(b.connected.load(Ordering::SeqCst)),
            b.disconnects.load(Ordering::Relaxed),
            b.published.load(Ordering::Relaxed),
            b.received.load(Ordering::Relaxed),
        );
        for (reason, n) in b.dropped.lock().iter() {
            let _ = writeln!(
                out,
                "fleetward_bus_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
    }

    /// Messages received from and delivered to clients of a tenant.
    pub fn messages(&self, tenant: &str) -> (u64, u64) {
        self.tenants
            .read()
            .get(tenant)
            .map(|c| {
                (
                    c.messages_in.load(Ordering::Relaxed),
                    c.messages_out.load(Ordering::Relaxed),
                )
            })
            .unwrap_or_default()
    }

    /// The Prometheus text exposition, with the decision cache's counters.
    pub fn render(&self, cache_hits: u64, cache_misses: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP fleetward_mqtt_connections MQTT connections open now.\n# TYPE fleetward_mqtt_connections gauge\nfleetward_mqtt_connections {}",
            self.connections()
        );
        let _ = writeln!(
            out,
            "# HELP fleetward_mqtt_connections_total MQTT connections accepted.\n# TYPE fleetward_mqtt_connections_total counter\nfleetward_mqtt_connections_total {}",
            self.connections_total.load(Ordering::Relaxed)
        );
        let tenants: Vec<(String, u64, u64)> = self
            .tenants
            .read()
            .iter()
            .map(|(t, c)| {
                (
                    t.clone(),
                    c.messages_in.load(Ordering::Relaxed),
                    c.messages_out.load(Ordering::Relaxed),
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "# HELP fleetward_mqtt_messages_in_total Messages accepted from clients, per tenant.\n# TYPE fleetward_mqtt_messages_in_total counter"
        );
        for (t, n, _) in &tenants {
            let _ = writeln!(
                out,
                "fleetward_mqtt_messages_in_total{{tenant=\"{}\"}} {n}",
                escape(t),
            );
        }
        let _ = writeln!(
            out,
            "# HELP fleetward_mqtt_messages_out_total Messages delivered to clients, per tenant.\n# TYPE fleetward_mqtt_messages_out_total counter"
        );
        for (t, _, n) in &tenants {
            let _ = writeln!(
                out,
                "fleetward_mqtt_messages_out_total{{tenant=\"{}\"}} {n}",
                escape(t),
            );
        }
        let _ = writeln!(
            out,
            "# HELP fleetward_mqtt_refusals_total Refused requests by kind and reason.\n# TYPE fleetward_mqtt_refusals_total counter"
        );
        for ((what, reason), n) in self.refusals.lock().iter() {
            let _ = writeln!(
                out,
                "fleetward_mqtt_refusals_total{{what=\"{what}\",reason=\"{reason}\"}} {n}"
            );
        }
        let total = cache_hits + cache_misses;
        let ratio = if total == 0 {
            0.0
        } else {
            cache_hits as f64 / total as f64
        };
        let _ = writeln!(
            out,
            "# HELP fleetward_decision_cache_hits_total Decisions served from the cache.\n# TYPE fleetward_decision_cache_hits_total counter\nfleetward_decision_cache_hits_total {cache_hits}\n# HELP fleetward_decision_cache_misses_total Decisions computed by the evaluator.\n# TYPE fleetward_decision_cache_misses_total counter\nfleetward_decision_cache_misses_total {cache_misses}\n# HELP fleetward_decision_cache_hit_ratio Share of decisions served from the cache.\n# TYPE fleetward_decision_cache_hit_ratio gauge\nfleetward_decision_cache_hit_ratio {ratio}"
        );
        let _ = writeln!(
            out,
            "# HELP fleetward_policy_snapshot_version The policy version being enforced.\n# TYPE fleetward_policy_snapshot_version gauge\nfleetward_policy_snapshot_version {}",
            self.snapshot_version.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fleetward_user_tokens_total Sign-ins and refreshes by operation and outcome.\n# TYPE fleetward_user_tokens_total counter"
        );
        for ((op, outcome), n) in self.users.lock().iter() {
            let _ = writeln!(
                out,
                "fleetward_user_tokens_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let (emitted, suppressed) = self.audit_events();
        let _ = writeln!(
            out,
            "# HELP fleetward_audit_events_total Audit events written (one per refusal, within each subject's limit).\n# TYPE fleetward_audit_events_total counter\nfleetward_audit_events_total {emitted}\n# HELP fleetward_audit_suppressed_total Refusals held back by the per-subject audit limit (counted into the subject's next event).\n# TYPE fleetward_audit_suppressed_total counter\nfleetward_audit_suppressed_total {suppressed}\n# HELP fleetward_audit_channel_dropped_total Audit events not published on their tenant's audit channel because its backlog was full (still logged and kept).\n# TYPE fleetward_audit_channel_dropped_total counter\nfleetward_audit_channel_dropped_total {}",
            self.audit_channel_dropped.load(Ordering::Relaxed)
        );
        self.render_bus(&mut out);
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_per_tenant_counts_refusals_and_the_hit_ratio() {
        let m = Metrics::default();
        m.connection_opened();
        m.messages_in("acme", 1);
        m.messages_out("acme", 1);
        m.messages_out("acme", 1);
        m.refused("subscribe", "no_grant");
        m.set_snapshot_version(7);
        let text = m.render(3, 1);
        assert!(text.contains("fleetward_mqtt_connections 1\n"), "{text}");
        assert!(text.contains("fleetward_mqtt_messages_out_total{tenant=\"acme\"} 2\n"));
        assert!(
            text.contains(
                "fleetward_mqtt_refusals_total{what=\"subscribe\",reason=\"no_grant\"} 1\n"
            )
        );
        assert!(text.contains("fleetward_decision_cache_hit_ratio 0.75\n"));
        assert!(text.contains("fleetward_policy_snapshot_version 7\n"));
        m.audit_emitted();
        m.audit_suppressed();
        m.audit_suppressed();
        m.audit_channel_dropped();
        let text = m.render(3, 1);
        assert!(
            text.contains("fleetward_audit_channel_dropped_total 1\n"),
            "{text}"
        );
        assert!(text.contains("fleetward_audit_events_total 1\n"), "{text}");
        assert!(
            text.contains("fleetward_audit_suppressed_total 2\n"),
            "{text}"
        );
        assert!(!text.contains("fleetward_bus_"), "no bus on a single pod");
    }

    #[test]
    fn the_bus_shows_outages_and_drops() {
        let m = Metrics::default();
        m.bus_configured();
        assert!(m.render(0, 0).contains("fleetward_bus_connected 0\n"));
        m.bus_connected(true);
        m.bus_connected(false);
        m.bus_connected(false);
        m.bus_connected(true);
        m.bus_dropped("disconnected");
        let text = m.render(0, 0);
        assert!(text.contains("fleetward_bus_connected 1\n"), "{text}");
        assert!(
            text.contains("fleetward_bus_disconnects_total 1\n"),
            "{text}"
        );
        assert!(text.contains("fleetward_bus_dropped_total{reason=\"disconnected\"} 1\n"));
        assert_eq!(m.bus_drops("disconnected"), 1);
    }
}
