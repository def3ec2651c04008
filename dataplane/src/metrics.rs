//! Counters of the front-end in a `prometheus-client` registry, and the exposition of
//! `/metrics` (the Prometheus text format, version 0.0.4).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`encode`]'s text.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels: a tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// Labels: what was refused and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    what: Cow<'static, str>,
    reason: Cow<'static, str>,
}

/// Labels: a sign-in or refresh and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    operation: Cow<'static, str>,
    outcome: Cow<'static, str>,
}

/// Labels: why the bus did not carry a message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Cow<'static, str>,
}

/// A tenant's message counters, the children of the two per-tenant families. They are kept
/// here too so that counting a message takes a shared lock and an atomic add, as before the
/// registry: no label is built and no family is hashed per message.
#[derive(Debug)]
struct TenantCounters {
    messages_in: Counter,
    messages_out: Counter,
}

/// The front-end's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: Gauge,
    connections_total: Counter,
    tenants: RwLock<BTreeMap<String, TenantCounters>>,
    messages_in: Family<TenantLabel, Counter>,
    messages_out: Family<TenantLabel, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    snapshot_version: Gauge,
    /// Sessions woken to re-check by policy changes, and how many the last change woke.
    policy_rechecks: Counter,
    policy_rechecks_last: Gauge,
    bus: Arc<BusCounters>,
    /// Sign-ins and refreshes by (operation, outcome).
    users: Family<TokenLabels, Counter>,
    /// Audit events written, and refusals held back by the per-subject limit.
    audit_emitted: Counter,
    audit_suppressed: Counter,
    audit_channel_dropped: Counter,
    /// Things made through provisioning claims.
    provisioned: Counter,
}

/// The NATS bus's counters: a collector, absent from `/metrics` on a single pod.
#[derive(Debug, Default)]
struct BusCounters {
    configured: AtomicBool,
    connected: AtomicBool,
    disconnects: Counter,
    published: Counter,
    received: Counter,
    dropped: Family<ReasonLabel, Counter>,
    durable_stored: Counter,
    durable_retried: Counter,
    durable_resumed: Counter,
}

impl Collector for BusCounters {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        if !self.configured.load(Ordering::Relaxed) {
            return Ok(());
        }
        gauge(
            &mut e,
            "fleetward_bus_connected",
            "Whether the bus is connected to NATS (0 during an outage).",
            u8::from(self.connected.load(Ordering::SeqCst)) as i64,
        )?;
        for (name, help, c) in [
            (
                "fleetward_bus_disconnects",
                "Times the bus lost NATS.",
                &self.disconnects,
            ),
            (
                "fleetward_bus_published",
                "Messages sent to other pods.",
                &self.published,
            ),
            (
                "fleetward_bus_received",
                "Messages from other pods delivered locally.",
                &self.received,
            ),
            (
                "fleetward_bus_durable_stored",
                "QoS 1/2 messages stored in their tenant's JetStream stream before their publisher was acknowledged.",
                &self.durable_stored,
            ),
            (
                "fleetward_bus_durable_retried",
                "Attempts to store a QoS 1/2 message again after JetStream did not acknowledge it (a NATS outage).",
                &self.durable_retried,
            ),
            (
                "fleetward_mqtt_durable_sessions_resumed",
                "Persistent sessions resumed from JetStream (on this pod or from another).",
                &self.durable_resumed,
            ),
        ] {
            c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        self.dropped.encode(e.encode_descriptor(
            "fleetward_bus_dropped",
            "Messages the bus did not carry, by reason.",
            None,
            MetricType::Counter,
        )?)
    }
}

/// A labelled counter family that is described (`# HELP`, `# TYPE`) on every scrape, also
/// before its first sample: `Registry::register` leaves an empty family out altogether, so a
/// scrape of a fresh pod would not show that it exists at all (dashboards and alert checks
/// look for the names).
#[derive(Debug)]
struct DescribedCounters<L> {
    /// Without `_total`, which the encoder adds.
    name: &'static str,
    /// With its final period.
    help: &'static str,
    family: Family<L, Counter>,
}

impl<L> Collector for DescribedCounters<L>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + fmt::Debug + Send + Sync + 'static,
{
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        self.family
            .encode(e.encode_descriptor(self.name, self.help, None, MetricType::Counter)?)
    }
}

fn owned_label(s: &str) -> Cow<'static, str> {
    Cow::Owned(s.to_owned())
}

impl Metrics {
    pub(crate) fn connection_opened(&self) {
        self.connections.inc();
        self.connections_total.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Connections open now.
    pub fn connections(&self) -> i64 {
        self.connections.get()
    }

    /// Counts `n` messages accepted from clients of `tenant`.
    pub(crate) fn messages_in(&self, tenant: &str, n: u64) {
        self.tenant(tenant, |c| {
            c.messages_in.inc_by(n);
        });
    }

    /// Counts `n` messages delivered to clients of `tenant`.
    pub(crate) fn messages_out(&self, tenant: &str, n: u64) {
        self.tenant(tenant, |c| {
            c.messages_out.inc_by(n);
        });
    }

    fn tenant(&self, tenant: &str, f: impl FnOnce(&TenantCounters)) {
        if let Some(c) = self.tenants.read().get(tenant) {
            f(c);
            return;
        }
        let label = TenantLabel {
            tenant: tenant.to_owned(),
        };
        let mut tenants = self.tenants.write();
        let c = tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantCounters {
                messages_in: self.messages_in.get_or_create_owned(&label),
                messages_out: self.messages_out.get_or_create_owned(&label),
            });
        f(c);
    }

    /// Counts a refusal: `what` is connect/publish/subscribe/limit, `reason` a stable label.
    pub(crate) fn refused(&self, what: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                what: Cow::Borrowed(what),
                reason: Cow::Borrowed(reason),
            })
            .inc();
    }

    /// Counts a sign-in by outcome (`ok`, `refused`, `rate_limited`, `unavailable`).
    pub(crate) fn user_login(&self, outcome: &'static str) {
        self.user_token("login", outcome);
    }

    /// Counts a refresh by outcome (`ok`, `refused`, `replayed`, `unavailable`).
    pub(crate) fn user_refresh(&self, outcome: &'static str) {
        self.user_token("refresh", outcome);
    }

    fn user_token(&self, operation: &'static str, outcome: &'static str) {
        self.users
            .get_or_create(&TokenLabels {
                operation: Cow::Borrowed(operation),
                outcome: Cow::Borrowed(outcome),
            })
            .inc();
    }

    /// How many sign-ins (`login`) or refreshes (`refresh`) ended with `outcome`.
    pub fn user_tokens(&self, operation: &str, outcome: &str) -> u64 {
        self.users
            .get(&TokenLabels {
                operation: owned_label(operation),
                outcome: owned_label(outcome),
            })
            .map_or(0, |c| c.get())
    }

    /// How often `what` was refused for `reason`.
    pub fn refusals(&self, what: &str, reason: &str) -> u64 {
        self.refusals
            .get(&RefusalLabels {
                what: owned_label(what),
                reason: owned_label(reason),
            })
            .map_or(0, |c| c.get())
    }

    pub(crate) fn provisioned(&self) {
        self.provisioned.inc();
    }

    pub(crate) fn audit_emitted(&self) {
        self.audit_emitted.inc();
    }

    pub(crate) fn audit_suppressed(&self) {
        self.audit_suppressed.inc();
    }

    pub(crate) fn audit_channel_dropped(&self) {
        self.audit_channel_dropped.inc();
    }

    /// Audit events written, and refusals the per-subject limit held back.
    pub fn audit_events(&self) -> (u64, u64) {
        (self.audit_emitted.get(), self.audit_suppressed.get())
    }

    pub(crate) fn set_snapshot_version(&self, v: u64) {
        self.snapshot_version
            .set(i64::try_from(v).unwrap_or(i64::MAX));
    }

    /// Counts the sessions a policy change woke to re-check.
    pub(crate) fn policy_rechecked(&self, sessions: usize) {
        let n = u64::try_from(sessions).unwrap_or(u64::MAX);
        self.policy_rechecks.inc_by(n);
        self.policy_rechecks_last
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }

    /// Sessions woken to re-check by policy changes so far, and by the last change.
    pub fn policy_rechecks(&self) -> (u64, i64) {
        (self.policy_rechecks.get(), self.policy_rechecks_last.get())
    }

    /// Records whether the bus is connected to NATS now; a change to "not" counts an outage.
    pub(crate) fn bus_connected(&self, connected: bool) {
        self.bus.configured.store(true, Ordering::Relaxed);
        let was = self.bus.connected.swap(connected, Ordering::SeqCst);
        if was && !connected {
            self.bus.disconnects.inc();
        }
    }

    pub(crate) fn bus_configured(&self) {
        self.bus.configured.store(true, Ordering::Relaxed);
    }

    pub(crate) fn bus_published(&self) {
        self.bus.published.inc();
    }

    pub(crate) fn durable_stored(&self) {
        self.bus.durable_stored.inc();
    }

    pub(crate) fn durable_retried(&self) {
        self.bus.durable_retried.inc();
    }

    pub(crate) fn durable_resumed(&self) {
        self.bus.durable_resumed.inc();
    }

    /// QoS 1/2 messages stored in JetStream, and retries of their stores.
    pub fn durable_counts(&self) -> (u64, u64) {
        (
            self.bus.durable_stored.get(),
            self.bus.durable_retried.get(),
        )
    }

    pub(crate) fn bus_received(&self) {
        self.bus.received.inc();
    }

    /// Counts a message the bus did not carry (`reason` a stable label).
    pub(crate) fn bus_dropped(&self, reason: &'static str) {
        self.bus
            .dropped
            .get_or_create(&ReasonLabel {
                reason: Cow::Borrowed(reason),
            })
            .inc();
    }

    /// Whether the bus is connected to NATS now.
    pub fn bus_is_connected(&self) -> bool {
        self.bus.connected.load(Ordering::SeqCst)
    }

    /// How often the bus lost NATS.
    pub fn bus_disconnects(&self) -> u64 {
        self.bus.disconnects.get()
    }

    /// Messages sent to and received from other pods.
    pub fn bus_messages(&self) -> (u64, u64) {
        (self.bus.published.get(), self.bus.received.get())
    }

    /// Messages the bus did not carry for `reason`.
    pub fn bus_drops(&self, reason: &str) -> u64 {
        self.bus
            .dropped
            .get(&ReasonLabel {
                reason: owned_label(reason),
            })
            .map_or(0, |c| c.get())
    }

    /// Messages received from and delivered to clients of a tenant.
    pub fn messages(&self, tenant: &str) -> (u64, u64) {
        self.tenants
            .read()
            .get(tenant)
            .map(|c| (c.messages_in.get(), c.messages_out.get()))
            .unwrap_or_default()
    }

    /// Registers these metrics in `registry` (which shares them: they count on after this).
    /// `Registry::register` adds the help's final period and a counter's `_total`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "fleetward_mqtt_connections",
            "MQTT connections open now",
            self.connections.clone(),
        );
        registry.register(
            "fleetward_mqtt_connections",
            "MQTT connections accepted",
            self.connections_total.clone(),
        );
        registry.register_collector(Box::new(DescribedCounters {
            name: "fleetward_mqtt_messages_in",
            help: "Messages accepted from clients, per tenant.",
            family: self.messages_in.clone(),
        }));
        registry.register_collector(Box::new(DescribedCounters {
            name: "fleetward_mqtt_messages_out",
            help: "Messages delivered to clients, per tenant.",
            family: self.messages_out.clone(),
        }));
        registry.register_collector(Box::new(DescribedCounters {
            name: "fleetward_mqtt_refusals",
            help: "Refused requests by kind and reason.",
            family: self.refusals.clone(),
        }));
        registry.register(
            "fleetward_policy_snapshot_version",
            "The policy version being enforced",
            self.snapshot_version.clone(),
        );
        registry.register(
            "fleetward_policy_rechecks",
            "Sessions and streams a policy change woke to re-check their subject and subscriptions",
            self.policy_rechecks.clone(),
        );
        registry.register(
            "fleetward_policy_rechecks_last",
            "Sessions and streams the last policy change woke to re-check",
            self.policy_rechecks_last.clone(),
        );
        registry.register_collector(Box::new(DescribedCounters {
            name: "fleetward_user_tokens",
            help: "Sign-ins and refreshes by operation and outcome.",
            family: self.users.clone(),
        }));
        registry.register(
            "fleetward_provisioned_things",
            "Things made through provisioning claims on this pod",
            self.provisioned.clone(),
        );
        registry.register(
            "fleetward_audit_events",
            "Audit events written (one per refusal, within each subject's limit)",
            self.audit_emitted.clone(),
        );
        registry.register(
            "fleetward_audit_suppressed",
            "Refusals held back by the per-subject audit limit (counted into the subject's next event)",
            self.audit_suppressed.clone(),
        );
        registry.register(
            "fleetward_audit_channel_dropped",
            "Audit events not published on their tenant's audit channel because its backlog was full (still logged and kept)",
            self.audit_channel_dropped.clone(),
        );
        registry.register_collector(Box::new(self.bus.clone()));
    }
}

/// The decision cache's counters and hit ratio, from `(hits, misses)` read at scrape time.
pub(crate) fn encode_decision_cache(
    e: &mut DescriptorEncoder,
    hits: u64,
    misses: u64,
) -> fmt::Result {
    let total = hits + misses;
    let ratio = if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    };
    counter(
        e,
        "fleetward_decision_cache_hits",
        "Decisions served from the cache.",
        hits,
    )?;
    counter(
        e,
        "fleetward_decision_cache_misses",
        "Decisions computed by the evaluator.",
        misses,
    )?;
    gauge(
        e,
        "fleetward_decision_cache_hit_ratio",
        "Share of decisions served from the cache.",
        ratio,
    )
}

/// A collector whose values are read when `/metrics` is scraped: state other parts of the
/// dataplane hold (sockets, retained messages, wills, router filters).
pub(crate) struct AtScrape(Box<dyn Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync>);

impl AtScrape {
    pub(crate) fn new(
        f: impl Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
    ) -> Box<Self> {
        Box::new(Self(Box::new(f)))
    }
}

impl fmt::Debug for AtScrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AtScrape")
    }
}

impl Collector for AtScrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut e)
    }
}

/// Writes one unlabelled gauge; `help` as it is shown.
pub(crate) fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl EncodeGaugeValue,
) -> fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// Writes one unlabelled counter; `name` without `_total`, which the encoder adds.
pub(crate) fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl EncodeCounterValue,
) -> fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// Writes a gauge with one sample per tenant.
pub(crate) fn gauge_per_tenant<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (tenant, v) in values {
        ConstGauge::new(v).encode(family.encode_family(&[("tenant", tenant)])?)?;
    }
    Ok(())
}

/// The registry's exposition in the Prometheus text format.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics, hits: u64, misses: u64) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        registry.register_collector(AtScrape::new(move |e| {
            encode_decision_cache(e, hits, misses)
        }));
        encode(&registry)
    }

    #[test]
    fn a_fresh_pod_describes_its_labelled_families_before_their_first_sample() {
        let text = render(&Metrics::default(), 0, 0);
        for family in [
            "fleetward_mqtt_messages_in_total",
            "fleetward_mqtt_messages_out_total",
            "fleetward_mqtt_refusals_total",
            "fleetward_user_tokens_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{family}: {text}"
            );
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}: {text}"
            );
        }
    }

    #[test]
    fn render_has_per_tenant_counts_refusals_and_the_hit_ratio() {
        let m = Metrics::default();
        m.connection_opened();
        m.messages_in("acme", 1);
        m.messages_out("acme", 1);
        m.messages_out("acme", 1);
        m.refused("subscribe", "no_grant");
        m.set_snapshot_version(7);
        let text = render(&m, 3, 1);
        assert!(text.contains("fleetward_mqtt_connections 1\n"), "{text}");
        assert!(
            text.contains("fleetward_mqtt_connections_total 1\n"),
            "{text}"
        );
        assert!(text.contains("fleetward_mqtt_messages_out_total{tenant=\"acme\"} 2\n"));
        assert!(
            text.contains(
                "fleetward_mqtt_refusals_total{what=\"subscribe\",reason=\"no_grant\"} 1\n"
            )
        );
        assert!(text.contains("fleetward_decision_cache_hit_ratio 0.75\n"));
        assert!(text.contains("fleetward_decision_cache_hits_total 3\n"));
        assert!(text.contains("fleetward_policy_snapshot_version 7\n"));
        assert!(
            text.contains("# HELP fleetward_mqtt_connections_total MQTT connections accepted.\n# TYPE fleetward_mqtt_connections_total counter\n"),
            "the text format (0.0.4) names a counter with its _total: {text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!((m.refusals("subscribe", "no_grant")), 1);
        assert_eq!(m.messages("acme"), (1, 2));
        m.audit_emitted();
        m.audit_suppressed();
        m.audit_suppressed();
        m.audit_channel_dropped();
        m.user_login("ok");
        let text = render(&m, 3, 1);
        assert!(
            text.contains("fleetward_audit_channel_dropped_total 1\n"),
            "{text}"
        );
        assert!(text.contains("fleetward_audit_events_total 1\n"), "{text}");
        assert!(
            text.contains("fleetward_audit_suppressed_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("fleetward_user_tokens_total{operation=\"login\",outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert_eq!(m.user_tokens("login", "ok"), 1);
        assert!(!text.contains("fleetward_bus_"), "no bus on a single pod");
    }

    #[test]
    fn a_tenant_label_is_escaped() {
        let m = Metrics::default();
        m.messages_in("a\"b\\c", 1);
        let text = render(&m, 0, 0);
        assert!(
            text.contains("fleetward_mqtt_messages_in_total{tenant=\"a\\\"b\\\\c\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn the_bus_shows_outages_and_drops() {
        let m = Metrics::default();
        m.bus_configured();
        assert!(render(&m, 0, 0).contains("fleetward_bus_connected 0\n"));
        m.bus_connected(true);
        m.bus_connected(false);
        m.bus_connected(false);
        m.bus_connected(true);
        m.bus_dropped("disconnected");
        let text = render(&m, 0, 0);
        assert!(text.contains("fleetward_bus_connected 1\n"), "{text}");
        assert!(
            text.contains("fleetward_bus_disconnects_total 1\n"),
            "{text}"
        );
        assert!(text.contains("fleetward_bus_dropped_total{reason=\"disconnected\"} 1\n"));
        assert_eq!(m.bus_drops("disconnected"), 1);
    }
}
