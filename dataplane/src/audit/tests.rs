//! The per-subject limit, its suppressed counts and summaries, and the rings' filters and pages.

use std::net::SocketAddr;
use std::sync::Arc;

use fleetward_policy::{Resources, Snapshot, SubjectKind, Tenant};
use tokio::sync::watch;

use super::*;

fn audit() -> (Audit, Arc<Metrics>) {
    let mut resources = Resources::default();
    resources.tenants.push(Tenant {
        provisioning: Default::default(),
        device_ca: Default::default(),
        engine: Default::default(),
        name: "acme".into(),
        uid: String::new(),
        suspended: false,
        limits: Default::default(),
        web: Default::default(),
    });
    let snapshot = Snapshot::from_resources(1, resources).expect("valid");
    let (_tx, rx) = watch::channel(Arc::new(snapshot));
    let metrics = Arc::new(Metrics::default());
    (Audit::new("pod-0", rx, metrics.clone()), metrics)
}

fn refusal<'a>(tenant: &'a str, subject: &'a str, reason: &'a str) -> Refusal<'a> {
    Refusal {
        tenant,
        kind: Some(SubjectKind::Thing),
        subject,
        action: Action::Publish,
        topic: Some("m/acme/c/telemetry"),
        reason,
        protocol: Protocol::Mqtt,
        client: None,
    }
}

fn all(a: &Audit, tenant: &str) -> Vec<Event> {
    a.query(
        tenant,
        &Filter {
            limit: 1000,
            ..Filter::default()
        },
    )
    .events
}

#[test]
fn a_flood_is_cut_to_the_burst_and_every_refusal_is_accounted_for() {
    let (a, metrics) = audit();
    for _ in 0..100 {
        a.refused(refusal("acme", "noisy", "no_grant"));
    }
    // Another subject has a limit of its own.
    a.refused(refusal("acme", "quiet", "no_grant"));
    let noisy: Vec<Event> = all(&a, "acme")
        .into_iter()
        .filter(|e| e.subject == "noisy")
        .collect();
    assert_eq!(noisy.len(), BURST_PER_SUBJECT as usize, "{noisy:?}");
    assert_eq!(all(&a, "acme").len(), noisy.len() + 1);
    assert_eq!(
        metrics.audit_events(),
        (
            u64::from(BURST_PER_SUBJECT) + 1,
            100 - u64::from(BURST_PER_SUBJECT)
        )
    );
    // The subject goes quiet: one summary carries what was held back.
    a.summarize();
    let summary = &all(&a, "acme")[0];
    assert!(summary.summary, "{summary:?}");
    assert_eq!(summary.subject, "noisy");
    assert_eq!(summary.suppressed, 100 - u64::from(BURST_PER_SUBJECT));
    assert_eq!(summary.reason, "no_grant");
    // Counted once: a second sweep writes nothing new.
    a.summarize();
    assert_eq!(all(&a, "acme").len(), noisy.len() + 2);
}

#[test]
fn events_are_json_with_the_documented_fields() {
    let (a, _) = audit();
    let mut r = refusal("acme", "sensor-1", "no_grant");
    r.client = Some(SocketAddr::from(([192, 0, 2, 1], 4000)));
    a.refused(r);
    let event = &all(&a, "acme")[0];
    let json: serde_json::Value = serde_json::to_value(event).expect("json");
    for field in [
        "id",
        "time",
        "tenant",
        "subject_kind",
        "subject",
        "action",
        "topic",
        "reason",
        "protocol",
        "client",
        "pod",
        "suppressed",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    assert_eq!(json["client"], "192.0.2.1:4000");
    assert_eq!(json["pod"], "pod-0");
    assert_eq!(json["action"], "publish");
    assert!(
        chrono::DateTime::parse_from_rfc3339(json["time"].as_str().expect("time")).is_ok(),
        "{json}"
    );
}

#[test]
fn made_up_tenants_are_logged_but_not_kept() {
    let (a, metrics) = audit();
    a.refused(refusal("nobody", "x", "unknown_tenant"));
    assert!(all(&a, "nobody").is_empty());
    assert_eq!(metrics.audit_events().0, 1);
}

#[test]
fn pages_run_newest_first_with_filters_and_a_cursor() {
    let (a, _) = audit();
    for i in 0..5 {
        a.refused(refusal("acme", &format!("t{i}"), "no_grant"));
    }
    a.refused(refusal("acme", "t9", "unknown_channel"));
    let page = a.query(
        "acme",
        &Filter {
            reason: Some("no_grant".into()),
            limit: 2,
            ..Filter::default()
        },
    );
    let names: Vec<&str> = page.events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(names, ["t4", "t3"]);
    let cursor = page.next_cursor.expect("more");
    let page = a.query(
        "acme",
        &Filter {
            reason: Some("no_grant".into()),
            limit: 10,
            before: Some(cursor.parse().expect("number")),
            ..Filter::default()
        },
    );
    let names: Vec<&str> = page.events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(names, ["t2", "t1", "t0"]);
    assert!(page.next_cursor.is_none());
    let by_subject = a.query(
        "acme",
        &Filter {
            subject: Some("thing/t9".into()),
            limit: 10,
            ..Filter::default()
        },
    );
    assert_eq!(by_subject.events.len(), 1);
    let wrong_kind = a.query(
        "acme",
        &Filter {
            subject: Some("user/t9".into()),
            limit: 10,
            ..Filter::default()
        },
    );
    assert!(wrong_kind.events.is_empty());
    let later = a.query(
        "acme",
        &Filter {
            since: Some(SystemTime::now() + Duration::from_secs(60)),
            limit: 10,
            ..Filter::default()
        },
    );
    assert!(later.events.is_empty());
}

#[test]
fn a_tenants_ring_keeps_the_newest() {
    let (a, _) = audit();
    for i in 0..(ring::EVENTS_PER_TENANT + 5) {
        // A subject each, so the per-subject limit keeps none back.
        a.refused(refusal("acme", &format!("t{i}"), "no_grant"));
    }
    let events = all(&a, "acme");
    assert_eq!(events.len(), ring::EVENTS_PER_TENANT);
    assert_eq!(
        events[0].subject,
        format!("t{}", ring::EVENTS_PER_TENANT + 4)
    );
}

#[test]
fn the_pod_keeps_a_bounded_number_of_events_across_tenants_the_oldest_going_first() {
    let (a, _) = audit();
    let rings = ring::Rings::with_limits(3, 5);
    let mut pushed = Vec::new();
    // Three tenants, four events each, one after another: 12 events, 5 kept in all.
    for i in 0..4 {
        for tenant in ["acme", "globex", "initech"] {
            let event = a.event(&refusal(tenant, &format!("s{i}"), "no_grant"), 0);
            pushed.push((tenant, event.id));
            rings.push(event);
        }
    }
    assert_eq!(rings.len(), 5, "the pod's cap");
    let kept: Vec<(&str, u64)> = ["acme", "globex", "initech"]
        .into_iter()
        .flat_map(|t| {
            let page = rings.query(
                t,
                &Filter {
                    limit: 10,
                    ..Filter::default()
                },
            );
            page.events.into_iter().map(move |e| (t, e.id))
        })
        .collect();
    let mut newest: Vec<(&str, u64)> = pushed[pushed.len() - 5..].to_vec();
    newest.sort();
    let mut kept = kept;
    kept.sort();
    assert_eq!(kept, newest, "the five newest events of the pod");

    // One tenant alone stays within its own cap.
    let rings = ring::Rings::with_limits(3, 100);
    for i in 0..10 {
        rings.push(a.event(&refusal("acme", &format!("s{i}"), "no_grant"), 0));
    }
    assert_eq!(rings.len(), 3);
}
