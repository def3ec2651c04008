//! Policy objects: validated against the Cedar schema, served for tenants whose engine is
//! `cedar`, and the last valid text kept enforced while a newer version is invalid.

use std::collections::HashMap;

use fleetward_policy as policy;

use super::input;
use super::object::{Kind, ObjectKey};
use super::readiness::{DesiredStatus, Facts, Readiness, Reason};
use super::resolve::{Namespace, Resolution};

/// The last valid text of each Policy, so that it stays enforced while a newer version is
/// invalid. It is also shown in the Policy's `status.enforced`, from which it is taken back
/// after an operator restart.
#[derive(Debug, Default)]
pub(crate) struct EnforcedPolicies {
    by_policy: HashMap<(String, String), Enforced>,
}

/// One Policy's last valid text.
#[derive(Clone, Debug)]
struct Enforced {
    uid: String,
    generation: Option<i64>,
    text: String,
}

impl EnforcedPolicies {
    pub fn forget(&mut self, namespace: &str, policy: &str) {
        self.by_policy
            .remove(&(namespace.to_owned(), policy.to_owned()));
    }

    /// The last valid text of `policy`: remembered for the same object (uid), or shown in its
    /// status and still valid.
    fn last_valid(&self, namespace: &str, name: &str, policy: &input::Policy) -> Option<Enforced> {
        let uid = policy.meta.uid.clone();
        let slot = (namespace.to_owned(), name.to_owned());
        if let Some(e) = self.by_policy.get(&slot).filter(|e| e.uid == uid) {
            return Some(e.clone());
        }
        let shown = policy.shown_enforced.as_ref()?;
        fleetward_cedar::validate_policies(&format!("Policy/{name}"), &shown.cedar).ok()?;
        Some(Enforced {
            uid,
            generation: shown.generation,
            text: shown.cedar.clone(),
        })
    }

    fn remember(&mut self, namespace: &str, name: &str, enforced: Enforced) {
        self.by_policy
            .insert((namespace.to_owned(), name.to_owned()), enforced);
    }
}

/// Resolves the Policies of a namespace that `tenant` owns.
pub(super) fn resolve(
    namespace: &str,
    tenant: &str,
    objects: &Namespace,
    engine: policy::Engine,
    enforced: &mut EnforcedPolicies,
    out: &mut Resolution,
) {
    for (name, object) in &objects.policies {
        let generation = object.meta.generation;
        let uid = object.meta.uid.clone();
        let checked = fleetward_cedar::validate_policies(&format!("Policy/{name}"), &object.cedar);
        let errors: Vec<(u32, u32, String)> = match &checked {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .iter()
                .map(|e| {
                    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
                    (n(e.line), n(e.column), e.message.clone())
                })
                .collect(),
        };
        let current = match checked {
            Ok(_) => {
                let e = Enforced {
                    uid,
                    generation,
                    text: object.cedar.clone(),
                };
                enforced.remember(namespace, name, e.clone());
                Some(e)
            }
            Err(_) => enforced.last_valid(namespace, name, object),
        };
        if engine == policy::Engine::Cedar
            && let Some(e) = &current
        {
            out.policies.push(policy::TenantPolicy {
                tenant: tenant.to_owned(),
                name: name.clone(),
                text: e.text.clone(),
            });
        }
        let readiness = readiness(tenant, engine, &errors, current.as_ref());
        // Enforced speaks of this generation: an invalid one is not, whatever older text is.
        let served = readiness.ready;
        let facts = Facts::Policy {
            errors,
            enforced: current.map(|e| (e.generation, e.text)),
        };
        out.statuses.push((
            ObjectKey::namespaced(Kind::Policy, namespace, name),
            DesiredStatus {
                generation,
                readiness,
                served,
                facts: facts.into(),
            },
        ));
    }
}

fn readiness(
    tenant: &str,
    engine: policy::Engine,
    errors: &[(u32, u32, String)],
    enforced: Option<&Enforced>,
) -> Readiness {
    if let Some((line, column, message)) = errors.first() {
        let more = match errors.len() {
            1 => String::new(),
            n => format!(" (and {} more errors in status.errors)", n - 1),
        };
        let kept = match enforced {
            Some(e) => match e.generation {
                Some(g) => format!("the last valid version (generation {g}) stays enforced"),
                None => "the last valid version stays enforced".to_owned(),
            },
            None => "no version of this Policy is enforced".to_owned(),
        };
        return Readiness::not_ready(
            Reason::InvalidPolicy,
            format!("spec.cedar line {line}, column {column}: {message}{more}; {kept}"),
        );
    }
    if engine != policy::Engine::Cedar {
        return Readiness::not_ready(
            Reason::EngineNotCedar,
            format!(
                "Tenant {tenant} authorizes with the {} engine, so this Policy decides nothing; \
                 set spec.authorization.engine: cedar on the Tenant to enforce it",
                engine.as_str()
            ),
        );
    }
    Readiness::ready(Reason::Accepted, "the policy is valid and served")
}
