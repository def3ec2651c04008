//! Kubernetes Events for condition transitions: a Warning when a condition turns False, a Normal `Enforced` once per generation.
//!
//! The status writer calls [`transitions`] with what an object showed and the status it has
//! just written, so an Event follows a transition, never a rewrite of the same state. Two
//! `False` states get no Warning: `Enforced=False` `Pending` (every change passes through it)
//! and `NotServed` (the `Ready=False` Warning already says why). A repeated Warning reaches the
//! API server through kube's `Recorder`, which aggregates repeats into one Event with a count;
//! Normal Events are created as they are ([`Events`]).

use std::collections::HashMap;

use fleetward_crds::status::{ENFORCED, READY};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::observed::ShownStatus;
use super::status::{REASON_NOT_SERVED, REASON_PENDING};
use crate::index::ObjectKey;

/// One Event a status transition calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionEvent {
    /// Warning for a condition that turned False, Normal for `Enforced`.
    pub warning: bool,
    /// The condition's reason (the Event's reason).
    pub reason: String,
    /// The condition's message (the Event's note).
    pub message: String,
    /// What the operator did: `Resolve` for `Ready`, `Enforce` for `Enforced`.
    pub action: &'static str,
    /// For `Enforced=True`: the generation it reports.
    pub enforced_generation: Option<i64>,
}

impl ConditionEvent {
    /// The Event to publish.
    pub fn event(&self) -> Event {
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.clone(),
            note: Some(self.message.clone()),
            action: self.action.to_owned(),
            secondary: None,
        }
    }
}

/// Where the status writer and the Secret reconciler send their Events. A Warning goes through
/// kube's `Recorder`, which counts a repeat into the first Event's series. A Normal Event (an
/// object's generation `Enforced`, a Thing's key generated or changed) comes once per change,
/// so it is created as it is: the `Recorder` keeps every Event it published for six minutes,
/// scanning them all at each publish, and would hold one for every object a bulk apply made
/// `Enforced` (tens of thousands at the control-plane benchmark's pace).
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
    recorder: Recorder,
}

impl Events {
    /// Events published as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
        }
    }

    /// Publishes `event` about `regarding` (in its namespace; `default` for a Tenant).
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        if event.type_ == EventType::Warning {
            return self.recorder.publish(event, regarding).await;
        }
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), &self.once(event, regarding))
            .await
            .map(drop)
    }

    /// The Kubernetes Event for `event`, as the `Recorder` would make its first one.
    fn once(&self, event: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            metadata: ObjectMeta {
                namespace: Some(
                    regarding
                        .namespace
                        .as_deref()
                        .unwrap_or("default")
                        .to_owned(),
                ),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                (self.reporter.instance.clone()).unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            ..K8sEvent::default()
        }
    }
}

fn action(type_: &str) -> &'static str {
    if type_ == ENFORCED {
        "Enforce"
    } else {
        "Resolve"
    }
}

/// Whether `False` with this reason of condition `type_` is worth a Warning.
fn warns(type_: &str, reason: &str) -> bool {
    !(type_ == ENFORCED && (reason == REASON_PENDING || reason == REASON_NOT_SERVED))
}

/// The Events for going from `shown` to `written`. `enforced_reported` is the generation
/// whose `Enforced=True` was last reported for this object, so a generation that is enforced,
/// then pending (a dataplane reconnects), then enforced again is reported once.
pub fn transitions(
    shown: Option<&ShownStatus>,
    written: &ShownStatus,
    enforced_reported: Option<i64>,
) -> Vec<ConditionEvent> {
    let before = shown.map_or(&[][..], ShownStatus::conditions);
    written
        .conditions()
        .iter()
        .filter(|c| c.type_ == READY || c.type_ == ENFORCED)
        .filter_map(|c| {
            transition(
                before.iter().find(|b| b.type_ == c.type_),
                c,
                enforced_reported,
            )
        })
        .collect()
}

fn transition(
    before: Option<&Condition>,
    after: &Condition,
    enforced_reported: Option<i64>,
) -> Option<ConditionEvent> {
    let event = |warning| ConditionEvent {
        warning,
        reason: after.reason.clone(),
        message: after.message.clone(),
        action: action(&after.type_),
        enforced_generation: None,
    };
    match after.status.as_str() {
        "False" => {
            // A new reason while False is a new problem, worth its own Warning.
            let unchanged = before.is_some_and(|b| b.status == "False" && b.reason == after.reason);
            (!unchanged && warns(&after.type_, &after.reason)).then(|| event(true))
        }
        "True" if after.type_ == ENFORCED => {
            let generation = after.observed_generation;
            let shown_already =
                before.is_some_and(|b| b.status == "True" && b.observed_generation == generation);
            if shown_already || (generation.is_some() && generation == enforced_reported) {
                return None;
            }
            Some(ConditionEvent {
                enforced_generation: generation,
                ..event(false)
            })
        }
        _ => None,
    }
}

/// The generation of each object whose `Enforced=True` was reported (this replica's memory:
/// after a restart or a failover, a generation the object already shows as enforced is not
/// rewritten, so it is not reported again either).
#[derive(Debug, Default)]
pub struct Reported {
    enforced: HashMap<ObjectKey, i64>,
}

impl Reported {
    /// The generation last reported enforced for `key`.
    pub fn enforced(&self, key: &ObjectKey) -> Option<i64> {
        self.enforced.get(key).copied()
    }

    /// Remembers that `event` was published for `key`.
    pub fn published(&mut self, key: &ObjectKey, event: &ConditionEvent) {
        if let Some(generation) = event.enforced_generation {
            self.enforced.insert(key.clone(), generation);
        }
    }

    /// Forgets an object that is gone.
    pub fn forget(&mut self, key: &ObjectKey) {
        self.enforced.remove(key);
    }

    /// Forgets objects that are gone.
    pub fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        self.enforced.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_crds::ResourceStatus;

    fn condition(type_: &str, status: bool, reason: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: format!("{reason} message"),
            observed_generation: Some(generation),
            last_transition_time: super::super::status::now(),
        }
    }

    fn status(conditions: Vec<Condition>) -> ShownStatus {
        ShownStatus::Resource(ResourceStatus {
            conditions,
            observed_generation: Some(1),
        })
    }

    fn reasons(events: &[ConditionEvent]) -> Vec<(bool, &str)> {
        events
            .iter()
            .map(|e| (e.warning, e.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_condition_turning_false_warns_once_with_its_reason_and_message() {
        let missing = status(vec![
            condition(READY, false, "ChannelNotFound", 1),
            condition(ENFORCED, false, REASON_NOT_SERVED, 1),
        ]);
        let events = transitions(None, &missing, None);
        assert_eq!(reasons(&events), [(true, "ChannelNotFound")]);
        assert_eq!(events[0].message, "ChannelNotFound message");
        assert_eq!(events[0].action, "Resolve");
        let event = events[0].event();
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.note.as_deref(), Some("ChannelNotFound message"));

        // Rewriting the same False state (a new message, a new generation) is no transition.
        let mut again = missing.clone();
        if let ShownStatus::Resource(s) = &mut again {
            s.conditions[0].message = "another wording".into();
            s.conditions[0].observed_generation = Some(2);
        }
        assert!(transitions(Some(&missing), &again, None).is_empty());

        // A new reason while False is a new Warning.
        let subject = status(vec![
            condition(READY, false, "SubjectNotFound", 2),
            condition(ENFORCED, false, REASON_NOT_SERVED, 2),
        ]);
        assert_eq!(
            reasons(&transitions(Some(&missing), &subject, None)),
            [(true, "SubjectNotFound")]
        );

        // True to False warns.
        let ready = status(vec![
            condition(READY, true, "Accepted", 1),
            condition(ENFORCED, true, "Enforced", 1),
        ]);
        assert_eq!(
            reasons(&transitions(Some(&ready), &missing, Some(1))),
            [(true, "ChannelNotFound")]
        );
    }

    #[test]
    fn pending_and_not_served_do_not_warn_but_no_dataplanes_does() {
        let ready =
            |enforced: Condition| status(vec![condition(READY, true, "Accepted", 1), enforced]);
        let pending = ready(condition(ENFORCED, false, REASON_PENDING, 1));
        assert!(transitions(None, &pending, None).is_empty());
        let gone = ready(condition(ENFORCED, false, "NoDataplanes", 1));
        let events = transitions(Some(&pending), &gone, None);
        assert_eq!(reasons(&events), [(true, "NoDataplanes")]);
        assert_eq!(events[0].action, "Enforce");
    }

    #[test]
    fn enforced_is_reported_once_per_generation() {
        let with = |enforced: bool, reason: &str, generation: i64| {
            status(vec![
                condition(READY, true, "Accepted", generation),
                condition(ENFORCED, enforced, reason, generation),
            ])
        };
        let pending = with(false, REASON_PENDING, 1);
        let enforced = with(true, "Enforced", 1);
        let mut reported = Reported::default();
        let key = ObjectKey::namespaced(crate::index::Kind::Connection, "acme", "grant");

        let events = transitions(Some(&pending), &enforced, reported.enforced(&key));
        assert_eq!(reasons(&events), [(false, "Enforced")]);
        assert_eq!(events[0].event().type_, EventType::Normal);
        reported.published(&key, &events[0]);

        // Already shown as enforced (a restart): nothing.
        assert!(transitions(Some(&enforced), &enforced, None).is_empty());
        // Pending again and back, same generation: nothing.
        assert!(transitions(Some(&pending), &enforced, reported.enforced(&key)).is_empty());
        // A new generation is reported again.
        let next = with(true, "Enforced", 2);
        let events = transitions(
            Some(&with(false, REASON_PENDING, 2)),
            &next,
            reported.enforced(&key),
        );
        assert_eq!(reasons(&events), [(false, "Enforced")]);
        assert_eq!(events[0].enforced_generation, Some(2));

        reported.retain(|_| false);
        assert_eq!(
            reported.enforced(&key),
            None,
            "a deleted object is forgotten"
        );
    }

    #[tokio::test]
    async fn a_normal_event_is_created_as_it_is_and_a_tenants_goes_to_default() {
        let api = super::super::fixtures::FakeApi::default();
        let reporter = Reporter {
            controller: "fleetward-operator".into(),
            instance: Some("operator-0".into()),
        };
        let events = Events::new(api.client(), reporter);
        let enforced = ConditionEvent {
            warning: false,
            reason: "Applied".into(),
            message: "every connected dataplane (2) has applied it".into(),
            action: "Enforce",
            enforced_generation: Some(3),
        };
        let key = ObjectKey::namespaced(crate::index::Kind::Connection, "acme", "grant");
        let reference = super::super::object_reference(&key, Some("uid-1".into()));
        // The fake answers Events with 404: the create is what is looked at.
        assert!(events.publish(&enforced.event(), &reference).await.is_err());
        let tenant = super::super::object_reference(&ObjectKey::tenant("acme"), None);
        assert!(events.publish(&enforced.event(), &tenant).await.is_err());
        let calls = api.calls();
        let paths: Vec<(&str, &str)> = calls
            .iter()
            .map(|c| (c.method.as_str(), c.path.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                ("POST", "/apis/events.k8s.io/v1/namespaces/acme/events"),
                ("POST", "/apis/events.k8s.io/v1/namespaces/default/events"),
            ]
        );
        let body = &calls[0].body;
        assert_eq!(body["type"], "Normal");
        assert_eq!(body["reason"], "Applied");
        assert_eq!(body["action"], "Enforce");
        assert_eq!(body["note"], "every connected dataplane (2) has applied it");
        assert_eq!(body["reportingController"], "fleetward-operator");
        assert_eq!(body["reportingInstance"], "operator-0");
        assert_eq!(body["regarding"]["name"], "grant");
        assert_eq!(body["regarding"]["uid"], "uid-1");
        assert_eq!(body["metadata"]["namespace"], "acme");
        assert!(
            body["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("grant."))
        );
        assert!(body["eventTime"].is_string());
        assert_eq!(calls[1].body["metadata"]["namespace"], "default");
    }
}
