//! The status each object should show: `Ready` from the index, `Enforced` from the dataplanes, kind facts, and when it differs from what the object shows.

use fleetward_crds::status::{ENFORCED, READY};
use fleetward_crds::{
    ClaimStatus, EnforcedPolicy, PolicyStatus, PolicyTextError, ResourceStatus, TenantStatus,
    ThingCertificate, ThingStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::observed::ShownStatus;
use crate::index::{ClaimFacts, DesiredStatus, Facts, Kind};
use crate::replicas::Remote;

/// Condition type of a Tenant with `spec.deviceCA`: whether its CA is loaded, so that client
/// certificates authenticate its things.
pub const DEVICE_CA: &str = "DeviceCA";
/// Condition type of a Thing with `x509.issue`: whether cert-manager issued its certificate.
pub const CERTIFICATE: &str = "Certificate";

/// `Enforced=True`: every connected dataplane has applied a snapshot containing the object.
pub const REASON_ENFORCED: &str = "Enforced";
/// `Enforced=False`: no dataplane is connected.
pub const REASON_NO_DATAPLANES: &str = "NoDataplanes";
/// `Enforced=False`: some connected dataplane has not applied it yet.
pub const REASON_PENDING: &str = "Pending";
/// `Enforced=False`: the object is not served (it is not `Ready`).
pub const REASON_NOT_SERVED: &str = "NotServed";

/// The `Enforced` condition an object should show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enforcement {
    /// `Enforced=True`.
    pub enforced: bool,
    /// The condition reason.
    pub reason: &'static str,
    /// The condition message.
    pub message: String,
}

/// `Enforced` for an object that is `served` and in the snapshot from version `included`, when
/// every connected dataplane has applied `enforced` (`None`: no dataplane is connected).
///
/// Messages name no version: versions differ between replicas and runs, and a message that
/// changed with them would rewrite every status after a restart or a failover.
pub fn enforcement(served: bool, included: Option<u64>, enforced: Option<u64>) -> Enforcement {
    let Some(included) = included.filter(|_| served) else {
        return Enforcement {
            enforced: false,
            reason: REASON_NOT_SERVED,
            message: "the resource is not in the policy snapshot (see the Ready condition), so no \
                      dataplane enforces it"
                .to_owned(),
        };
    };
    match enforced {
        None => Enforcement {
            enforced: false,
            reason: REASON_NO_DATAPLANES,
            message: "no dataplane is connected to the operator; the resource is enforced once \
                      dataplanes connect and apply the policy snapshot that contains it"
                .to_owned(),
        },
        Some(applied) if applied >= included => enforced_everywhere(),
        Some(_) => pending(),
    }
}

fn enforced_everywhere() -> Enforcement {
    Enforcement {
        enforced: true,
        reason: REASON_ENFORCED,
        message: "every connected dataplane has applied a policy snapshot that contains this \
                  generation"
            .to_owned(),
    }
}

fn pending() -> Enforcement {
    Enforcement {
        enforced: false,
        reason: REASON_PENDING,
        message: "waiting for every connected dataplane to apply the policy snapshot that \
                  contains this generation"
            .to_owned(),
    }
}

/// [`enforcement`] over every replica: this replica's dataplanes (`enforced`) and what the
/// other replicas report of theirs (`remote`).
pub fn enforcement_across(
    served: bool,
    included: Option<u64>,
    enforced: Option<u64>,
    remote: Remote,
) -> Enforcement {
    let local = enforcement(served, included, enforced);
    match (local.reason, remote) {
        (_, Remote::None) | (REASON_NOT_SERVED, _) => local,
        (REASON_ENFORCED | REASON_NO_DATAPLANES, Remote::Enforced) => enforced_everywhere(),
        _ => pending(),
    }
}

/// The current time in whole seconds, as the API server stores condition times.
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    shown: &[Condition],
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // The transition time moves only when the condition's status does.
    let last_transition_time = shown
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The full status an object of `kind` should show; `None` for kinds without a status.
pub fn full_status(
    kind: Kind,
    desired: &DesiredStatus,
    enforcement: &Enforcement,
    shown: Option<&ShownStatus>,
    now: &Time,
) -> Option<ShownStatus> {
    let shown_conditions = shown.map_or(&[][..], ShownStatus::conditions);
    let ready = &desired.readiness;
    let conditions = vec![
        condition(
            READY,
            ready.ready,
            ready.reason.as_str(),
            &ready.message,
            desired.generation,
            shown_conditions,
            now,
        ),
        condition(
            ENFORCED,
            enforcement.enforced,
            enforcement.reason,
            &enforcement.message,
            desired.generation,
            shown_conditions,
            now,
        ),
    ];
    let mut conditions = conditions;
    conditions.extend(certificate_condition(desired, shown_conditions, now));
    let observed_generation = desired.generation;
    Some(match kind {
        Kind::Tenant => {
            let mut status = TenantStatus {
                conditions,
                observed_generation,
                ..TenantStatus::default()
            };
            if let Facts::Tenant {
                namespace: Some(namespace),
                things,
                channels,
                claims,
                ..
            } = &*desired.facts
            {
                status.namespace = Some(namespace.clone());
                status.things = Some(*things);
                status.channels = Some(*channels);
                status.provisioning = claims.iter().map(claim_status).collect();
            }
            ShownStatus::Tenant(status)
        }
        Kind::Thing => ShownStatus::Thing(thing_status(conditions, observed_generation, desired)),
        Kind::Policy => {
            ShownStatus::Policy(policy_status(conditions, observed_generation, desired))
        }
        Kind::Channel | Kind::Connection | Kind::User | Kind::Group => {
            ShownStatus::Resource(ResourceStatus {
                conditions,
                observed_generation,
            })
        }
        Kind::Secret => return None,
    })
}

/// A Thing's status: its conditions, its keys and its certificate.
fn thing_status(
    conditions: Vec<Condition>,
    observed_generation: Option<i64>,
    desired: &DesiredStatus,
) -> ThingStatus {
    let mut status = ThingStatus {
        conditions,
        observed_generation,
        ..ThingStatus::default()
    };
    if let Facts::Thing {
        secret_name,
        key_fingerprint,
        keys,
        x509,
        ..
    } = &*desired.facts
    {
        status.secret_name = Some(secret_name.clone());
        status.key_fingerprint = key_fingerprint.clone();
        status.keys = Some(*keys);
        status.certificate =
            x509.as_ref()
                .and_then(|x| x.certificate.as_ref())
                .map(|c| ThingCertificate {
                    secret_name: c.secret_name.clone(),
                    serial: Some(c.serial.clone()),
                    not_after: c.not_after.clone(),
                    fingerprint: Some(c.fingerprint.clone()),
                });
    }
    status
}

/// A Tenant's `DeviceCA` or a Thing's `Certificate` condition, when it has one.
fn certificate_condition(
    desired: &DesiredStatus,
    shown: &[Condition],
    now: &Time,
) -> Option<Condition> {
    let (type_, r) = match &*desired.facts {
        Facts::Tenant {
            device_ca: Some(r), ..
        } => (DEVICE_CA, r),
        Facts::Thing { x509: Some(x), .. } => (CERTIFICATE, x.condition.as_ref()?),
        _ => return None,
    };
    Some(condition(
        type_,
        r.ready,
        r.reason.as_str(),
        &r.message,
        desired.generation,
        shown,
        now,
    ))
}

/// What one provisioning claim shows in `Tenant.status.provisioning`.
fn claim_status(c: &ClaimFacts) -> ClaimStatus {
    ClaimStatus {
        name: c.name.clone(),
        provisioned: c.provisioned,
        message: c.message.clone(),
    }
}

/// A Policy's status: its conditions, its errors and the text being enforced.
fn policy_status(
    conditions: Vec<Condition>,
    observed_generation: Option<i64>,
    desired: &DesiredStatus,
) -> PolicyStatus {
    let mut status = PolicyStatus {
        conditions,
        observed_generation,
        ..PolicyStatus::default()
    };
    if let Facts::Policy { errors, enforced } = &*desired.facts {
        status.errors = errors
            .iter()
            .map(|(line, column, message)| PolicyTextError {
                line: *line,
                column: *column,
                message: message.clone(),
            })
            .collect();
        status.enforced = enforced.as_ref().map(|(generation, cedar)| EnforcedPolicy {
            generation: *generation,
            cedar: cedar.clone(),
        });
    }
    status
}

/// Whether `desired` must be written: it differs from what the object shows in a field the
/// operator owns (conditions are compared by type, ignoring ones other writers own).
pub fn differs(desired: &ShownStatus, shown: Option<&ShownStatus>) -> bool {
    let Some(shown) = shown else {
        return true;
    };
    normalized(desired) != normalized(shown)
}

/// Whether `desired` shows the same conditions as `shown` (the operator's, compared by type):
/// what differs, if anything, is in the kind's facts.
pub fn same_conditions(desired: &ShownStatus, shown: Option<&ShownStatus>) -> bool {
    shown.is_some_and(|shown| normalized(desired).conditions() == normalized(shown).conditions())
}

fn normalized(status: &ShownStatus) -> ShownStatus {
    let fix = |conditions: &mut Vec<Condition>| {
        conditions
            .retain(|c| [READY, ENFORCED, DEVICE_CA, CERTIFICATE].contains(&c.type_.as_str()));
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    };
    let mut status = status.clone();
    match &mut status {
        ShownStatus::Tenant(s) => fix(&mut s.conditions),
        ShownStatus::Thing(s) => {
            fix(&mut s.conditions);
            // Others' to write (revocations): never the operator's.
            s.revoked_serials.clear();
        }
        ShownStatus::Resource(s) => fix(&mut s.conditions),
        ShownStatus::Policy(s) => fix(&mut s.conditions),
    }
    status
}

pub(crate) fn status_json(status: &ShownStatus) -> serde_json::Result<serde_json::Value> {
    match status {
        ShownStatus::Tenant(s) => serde_json::to_value(s),
        ShownStatus::Thing(s) => serde_json::to_value(s),
        ShownStatus::Resource(s) => serde_json::to_value(s),
        ShownStatus::Policy(s) => serde_json::to_value(s),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::index::{Readiness, Reason};

    fn time(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("a valid time"))
    }

    /// A Thing's desired status, Ready or waiting for its Secret (also used by the writer's tests).
    pub(crate) fn thing_desired(ready: bool) -> DesiredStatus {
        DesiredStatus {
            generation: Some(2),
            readiness: if ready {
                Readiness::ready(Reason::Accepted, "the thing's credentials are in place")
            } else {
                Readiness::not_ready(Reason::CredentialsPending, "waiting for the Secret")
            },
            served: ready,
            facts: Facts::Thing {
                secret_name: "sensor-1-credentials".into(),
                key_fingerprint: ready.then(|| "0123456789ab".into()),
                keys: u32::from(ready),
                mode: fleetward_policy::CredentialMode::Key,
                x509: None,
            }
            .into(),
        }
    }

    #[test]
    fn other_replicas_dataplanes_count_as_much_as_this_ones() {
        let across = |included, local, remote| enforcement_across(true, included, local, remote);
        assert_eq!(
            across(Some(5), None, Remote::None).reason,
            REASON_NO_DATAPLANES
        );
        assert!(
            across(Some(5), None, Remote::Enforced).enforced,
            "dataplanes only on another replica"
        );
        assert!(across(Some(5), Some(5), Remote::Enforced).enforced);
        assert_eq!(
            across(Some(5), Some(5), Remote::Pending).reason,
            REASON_PENDING
        );
        assert_eq!(
            across(Some(5), Some(4), Remote::Enforced).reason,
            REASON_PENDING,
            "this replica's dataplane is behind"
        );
        assert_eq!(
            across(Some(5), None, Remote::Pending).reason,
            REASON_PENDING
        );
        assert_eq!(
            enforcement_across(false, None, None, Remote::Enforced).reason,
            REASON_NOT_SERVED
        );
    }

    #[test]
    fn enforced_follows_the_lowest_applied_version() {
        assert_eq!(
            enforcement(true, Some(5), None).reason,
            REASON_NO_DATAPLANES
        );
        assert_eq!(enforcement(true, Some(5), Some(4)).reason, REASON_PENDING);
        let e = enforcement(true, Some(5), Some(5));
        assert!(e.enforced);
        assert_eq!(e.reason, REASON_ENFORCED);
        assert!(enforcement(true, Some(5), Some(9)).enforced);
        assert_eq!(
            enforcement(false, Some(5), Some(9)).reason,
            REASON_NOT_SERVED
        );
        assert_eq!(enforcement(true, None, Some(9)).reason, REASON_NOT_SERVED);
        assert_eq!(
            enforcement(true, Some(5), Some(6)),
            enforcement(true, Some(5), Some(7)),
            "later ACKs do not change the condition, so they cause no write"
        );
    }

    #[test]
    fn a_thing_shows_ready_enforced_and_its_credentials() {
        let desired = thing_desired(true);
        let e = enforcement(true, Some(3), Some(3));
        let Some(ShownStatus::Thing(s)) = full_status(Kind::Thing, &desired, &e, None, &time(100))
        else {
            panic!("a Thing gets a ThingStatus");
        };
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.secret_name.as_deref(), Some("sensor-1-credentials"));
        assert_eq!(s.key_fingerprint.as_deref(), Some("0123456789ab"));
        assert_eq!(s.keys, Some(1));
        let ready = &s.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            (READY, "True", "Accepted")
        );
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(ready.last_transition_time, time(100));
        let enforced = &s.conditions[1];
        assert_eq!(
            (enforced.type_.as_str(), enforced.status.as_str()),
            (ENFORCED, "True")
        );
    }

    #[test]
    fn a_tenant_shows_its_namespace_and_counts_only_when_it_owns_one() {
        let mut desired = DesiredStatus {
            generation: Some(1),
            readiness: Readiness::ready(Reason::Accepted, "owns acme"),
            served: true,
            facts: Facts::Tenant {
                namespace: Some("acme".into()),
                things: 2,
                channels: 1,
                claims: Vec::new(),
                device_ca: None,
            }
            .into(),
        };
        let e = enforcement(true, Some(1), None);
        let Some(ShownStatus::Tenant(s)) = full_status(Kind::Tenant, &desired, &e, None, &time(1))
        else {
            panic!("a Tenant gets a TenantStatus");
        };
        assert_eq!(
            (s.namespace.as_deref(), s.things, s.channels),
            (Some("acme"), Some(2), Some(1))
        );
        desired.readiness = Readiness::not_ready(Reason::NamespaceClaimed, "taken");
        desired.facts = Facts::Tenant {
            namespace: None,
            things: 0,
            channels: 0,
            claims: Vec::new(),
            device_ca: None,
        }
        .into();
        desired.served = false;
        let e = enforcement(desired.served, None, Some(4));
        let Some(ShownStatus::Tenant(s)) = full_status(Kind::Tenant, &desired, &e, None, &time(1))
        else {
            panic!("a Tenant gets a TenantStatus");
        };
        assert_eq!((s.namespace, s.things, s.channels), (None, None, None));
        assert_eq!(s.conditions[0].reason, "NamespaceClaimed");
        assert_eq!(s.conditions[1].reason, REASON_NOT_SERVED);
    }

    #[test]
    fn transition_times_move_only_when_a_condition_status_changes() {
        let pending = thing_desired(false);
        let not_served = enforcement(false, None, None);
        let first =
            full_status(Kind::Thing, &pending, &not_served, None, &time(100)).expect("a status");
        assert!(!differs(&first, Some(&first)), "equal: no write");

        // Later, the same desired status: nothing to write, times kept.
        let again = full_status(Kind::Thing, &pending, &not_served, Some(&first), &time(200))
            .expect("a status");
        assert_eq!(again, first);
        assert!(!differs(&again, Some(&first)));

        // The Secret appears: Ready turns True at 300, Enforced stays False (now pending).
        let ready = thing_desired(true);
        let pending_push = enforcement(true, Some(7), Some(6));
        let next = full_status(Kind::Thing, &ready, &pending_push, Some(&first), &time(300))
            .expect("a status");
        assert!(differs(&next, Some(&first)));
        let c = next.conditions();
        assert_eq!(
            (c[0].status.as_str(), &c[0].last_transition_time),
            ("True", &time(300))
        );
        assert_eq!(
            (
                c[1].status.as_str(),
                c[1].reason.as_str(),
                &c[1].last_transition_time
            ),
            ("False", REASON_PENDING, &time(100)),
            "Enforced was False before too: its transition time is kept"
        );
    }

    #[test]
    fn condition_order_and_foreign_conditions_cause_no_write() {
        let desired = thing_desired(true);
        let e = enforcement(true, Some(3), Some(3));
        let status = full_status(Kind::Thing, &desired, &e, None, &time(5)).expect("a status");
        let ShownStatus::Thing(mut shown) = status.clone() else {
            panic!("a ThingStatus");
        };
        shown.conditions.reverse();
        shown.conditions.push(Condition {
            type_: "Audited".into(),
            status: "True".into(),
            reason: "Checked".into(),
            message: "written by another controller".into(),
            observed_generation: None,
            last_transition_time: time(1),
        });
        assert!(!differs(&status, Some(&ShownStatus::Thing(shown.clone()))));
        shown.keys = Some(2);
        assert!(
            differs(&status, Some(&ShownStatus::Thing(shown))),
            "a changed fact is written"
        );
        assert!(
            differs(&status, None),
            "an object without a status gets one"
        );
    }

    #[test]
    fn status_json_round_trips_through_what_the_api_server_returns() {
        let desired = thing_desired(true);
        let e = enforcement(true, Some(3), None);
        let status = full_status(Kind::Thing, &desired, &e, None, &now()).expect("a status");
        let json = status_json(&status).expect("serializable");
        assert_eq!(json["conditions"][0]["type"], "Ready");
        assert_eq!(json["secretName"], "sensor-1-credentials");
        let back = ShownStatus::from_json(Kind::Thing, json).expect("parses");
        assert!(
            !differs(&status, Some(&back)),
            "what was written reads back equal"
        );
    }
}
