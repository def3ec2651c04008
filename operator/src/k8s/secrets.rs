//! Thing Secrets: a Thing whose Secret does not exist gets one with a generated key, owned by the Thing; a Secret that exists is never changed.
//!
//! Each round plans only the Things that changed: those an index commit changed (a Secret
//! appearing or going changes its Thing's status), those whose shown state changed, and those
//! whose retry is due. Everything is planned at start, when the replica starts leading, when a
//! namespace's Secrets are listed, and every [`RESYNC`] as a safety net.
//!
//! A brought-your-own Secret (one the user created first) is kept exactly as it is: its key is
//! used, no owner reference is added and the operator never writes to it, so deleting the
//! Thing leaves the user's Secret in place (it may be shared or managed by another tool).
//! Only Secrets the operator created carry the Thing as controller owner, so the garbage
//! collector removes them with the Thing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use tokio::sync::watch;

use super::events::Events;
use super::observed::Observed;
use super::{Error, FIELD_MANAGER, RESYNC, Retries, object_reference};
use crate::changes::ChangedKeys;
use crate::index::{Facts, Kind, ObjectKey, Reason};
use crate::metrics::Metrics;
use crate::shared::SharedIndex;

/// The Secret entry a generated key is stored under.
pub const KEY_ENTRY: &str = "key";
/// Label on generated Secrets: who manages them.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label on generated Secrets: the Thing they belong to.
pub const LABEL_THING: &str = "fleetward.io/thing";

/// Secret creations in flight at once.
const CONCURRENT_CREATES: usize = 32;
/// Secret creations per round; the rest are planned again next round.
const CREATES_PER_ROUND: usize = 256;
/// The planner's name in the metrics.
const PLANNER: &str = "secrets";

/// The Thing a Secret is generated for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThingRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid, for the owner reference.
    pub uid: String,
}

/// The Secret holding a generated `key` for `thing`, owned by the Thing (controller owner), so
/// the garbage collector deletes it with the Thing.
pub fn thing_secret(thing: &ThingRef, secret_name: &str, key: &str) -> Secret {
    let resource = super::api_resource(Kind::Thing);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            namespace: Some(thing.namespace.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
                (LABEL_THING.to_owned(), thing.name.clone()),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: resource.api_version,
                kind: resource.kind,
                name: thing.name.clone(),
                uid: thing.uid.clone(),
                controller: Some(true),
                // Blocking the owner's deletion would need update rights on things/finalizers.
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            KEY_ENTRY.to_owned(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// A Secret to create.
#[derive(Debug)]
struct Create {
    key: ObjectKey,
    thing: ThingRef,
    secret_name: String,
}

/// A Thing whose Secret now holds another number of keys.
#[derive(Debug)]
struct Rotation {
    key: ObjectKey,
    uid: Option<String>,
    secret_name: String,
    before: u32,
    after: u32,
}

/// What one plan found to do.
#[derive(Debug, Default)]
struct Plan {
    creates: Vec<Create>,
    rotations: Vec<Rotation>,
}

/// What the reconciler remembers between rounds.
struct Memory {
    index_changes: ChangedKeys,
    observed_changes: ChangedKeys,
    /// Each Thing's key count, to report rotations.
    keys_seen: HashMap<ObjectKey, u32>,
    retries: Retries,
    /// Things planned but not created last round (past the round's cap).
    carried: HashSet<ObjectKey>,
    everything: bool,
    resync_at: Instant,
}

impl Memory {
    /// The Things to plan at `now`; `None`: every one.
    fn scope(&mut self, now: Instant) -> Option<Vec<ObjectKey>> {
        let index = self.index_changes.take();
        let observed = self.observed_changes.take();
        let mut keys = std::mem::take(&mut self.carried);
        if std::mem::take(&mut self.everything)
            || index.everything
            || observed.everything
            || now >= self.resync_at
        {
            self.resync_at = now + RESYNC;
            return None;
        }
        keys.extend(index.keys);
        keys.extend(observed.keys);
        keys.extend(self.retries.due(now).cloned());
        Some(keys.into_iter().filter(|k| k.kind == Kind::Thing).collect())
    }

    fn next_wake(&self, now: Instant) -> Instant {
        self.retries
            .next_after(now)
            .map_or(self.resync_at, |at| at.min(self.resync_at))
    }
}

/// Creates missing Thing Secrets and records Events; writes only while the replica leads.
pub struct SecretReconciler {
    /// The API client.
    pub client: Client,
    /// The index: Things, their Secret names and key counts.
    pub index: Arc<SharedIndex>,
    /// Which Secrets exist, the Things' uids.
    pub observed: Arc<Observed>,
    /// Counts and errors.
    pub metrics: Arc<Metrics>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// Records key created, keys changed and errors on the Thing.
    pub events: Events,
}

impl SecretReconciler {
    /// Runs until the index or the leadership go away.
    pub async fn run(mut self) -> &'static str {
        let mut commits = self.index.subscribe();
        let mut seen = self.observed.subscribe();
        let mut memory = self.memory();
        let mut was_leading = false;
        loop {
            let now = Instant::now();
            let leading = *self.leader.borrow_and_update();
            // A new leader does not know what the last one left undone.
            memory.everything |= leading && !was_leading;
            was_leading = leading;
            if self.observed.ready().is_ok() {
                let scope = memory.scope(now);
                let plan = self.plan(&mut memory, scope.as_deref(), now);
                // Every replica tracks key counts, so a new leader reports only new changes.
                if leading && self.act(plan, &mut memory).await {
                    continue;
                }
            }
            let wake = memory.next_wake(now);
            if super::next_round(&mut commits, &mut seen, &mut self.leader, Some(wake)).await {
                return "Secret reconciler";
            }
        }
    }

    /// A memory whose first round plans everything.
    fn memory(&self) -> Memory {
        Memory {
            index_changes: self.index.changes(),
            observed_changes: self.observed.changes(),
            keys_seen: HashMap::new(),
            retries: Retries::default(),
            carried: HashSet::new(),
            everything: true,
            resync_at: Instant::now() + RESYNC,
        }
    }

    /// Reports the rotations and creates the Secrets of one plan; whether creations were left
    /// for the next round.
    async fn act(&self, plan: Plan, memory: &mut Memory) -> bool {
        for rotation in plan.rotations {
            self.rotated(&rotation).await;
        }
        let mut creates = plan.creates;
        let more = creates.len() > CREATES_PER_ROUND;
        if more {
            memory
                .carried
                .extend(creates.drain(CREATES_PER_ROUND..).map(|c| c.key));
        }
        self.create_all(creates, &mut memory.retries).await;
        more
    }

    /// The Secrets to create and the rotations to report among `things` (`None`: every Thing).
    fn plan(&self, memory: &mut Memory, things: Option<&[ObjectKey]>, now: Instant) -> Plan {
        let idx = self.index.read();
        let mut plan = Plan::default();
        let planned = match things {
            None => {
                memory.keys_seen.retain(|key, _| idx.status(key).is_some());
                let mut planned = 0;
                for key in idx.objects().filter(|k| k.kind == Kind::Thing) {
                    self.plan_thing(key, &idx, memory, now, &mut plan);
                    planned += 1;
                }
                planned
            }
            Some(keys) => {
                for key in keys {
                    self.plan_thing(key, &idx, memory, now, &mut plan);
                }
                keys.len()
            }
        };
        self.metrics.planned(PLANNER, planned, things.is_none());
        plan
    }

    /// What one Thing needs: a rotation to report, a Secret to create.
    fn plan_thing(
        &self,
        key: &ObjectKey,
        idx: &crate::index::Index,
        memory: &mut Memory,
        now: Instant,
        plan: &mut Plan,
    ) {
        let Some(desired) = idx.status(key) else {
            memory.keys_seen.remove(key);
            return;
        };
        // Only Things in a namespace a Tenant owns have credentials facts.
        let Facts::Thing {
            secret_name,
            keys,
            mode,
            ..
        } = &*desired.facts
        else {
            return;
        };
        let shown = self.observed.shown(key);
        if let Some(before) = memory.keys_seen.insert(key.clone(), *keys)
            && before != *keys
            && before > 0
            && *keys > 0
        {
            plan.rotations.push(Rotation {
                key: key.clone(),
                uid: shown.as_ref().and_then(|s| s.uid.clone()),
                secret_name: secret_name.clone(),
                before,
                after: *keys,
            });
        }
        // A Thing beyond its tenant's limit is not served, so it gets no key either; a
        // certificate-only Thing has no use for one.
        if desired.readiness.reason == Reason::LimitExceeded
            || !mode.allows_key()
            || memory.retries.blocks(key, now)
        {
            return;
        }
        match self.observed.secret_exists(&key.namespace, secret_name) {
            Some(false) => {}
            // Nothing left to retry.
            Some(true) => return memory.retries.succeeded(key),
            None => return,
        }
        let Some(uid) = shown.filter(|s| !s.deleting).and_then(|s| s.uid) else {
            return;
        };
        plan.creates.push(Create {
            key: key.clone(),
            thing: ThingRef {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                uid,
            },
            secret_name: secret_name.clone(),
        });
    }

    /// Creates up to [`CREATES_PER_ROUND`] Secrets; the rest waits for the next plan. Each
    /// creation records its Event in the same concurrent step: Events one after another would
    /// cost a round trip per Thing and dominate a bulk apply.
    async fn create_all(&self, creates: Vec<Create>, retries: &mut Retries) {
        let round = creates.into_iter().take(CREATES_PER_ROUND);
        let results: Vec<(Create, Result<bool, Error>)> = futures::stream::iter(round)
            .map(|c| async move {
                let started = Instant::now();
                let result = self.try_create(&c).await;
                self.metrics.reconciled(Kind::Thing, started.elapsed());
                if let Ok(true) = result {
                    self.key_generated(&c).await;
                }
                (c, result)
            })
            .buffer_unordered(CONCURRENT_CREATES)
            .collect()
            .await;
        for (create, result) in results {
            self.created(create, result, retries).await;
        }
    }

    /// Logs and records a generated key.
    async fn key_generated(&self, c: &Create) {
        tracing::info!(thing = %c.key, secret = %c.secret_name, "generated a key");
        let note = format!(
            "generated a new key in Secret {}/{} (entry `{KEY_ENTRY}`); the Secret is deleted \
             with the Thing",
            c.thing.namespace, c.secret_name
        );
        self.record(
            &c.key,
            Some(c.thing.uid.clone()),
            EventType::Normal,
            "KeyGenerated",
            note,
        )
        .await;
    }

    /// Records the outcome of one creation: metrics, logs, Warning Events and retries.
    async fn created(&self, c: Create, result: Result<bool, Error>, retries: &mut Retries) {
        match result {
            Ok(true) => {
                retries.succeeded(&c.key);
                self.observed.set_credentials_error(&c.key, None);
                self.metrics.secret_created();
            }
            Ok(false) => {
                retries.succeeded(&c.key);
                self.observed.set_credentials_error(&c.key, None);
                tracing::info!(thing = %c.key, secret = %c.secret_name, "the Secret appeared meanwhile; keeping its key");
            }
            Err(e) => {
                self.metrics.reconcile_failed(Kind::Thing, &e);
                self.observed
                    .set_credentials_error(&c.key, Some(e.to_string()));
                let failures = retries.failed(c.key.clone());
                tracing::warn!(thing = %c.key, failures, error = %e, "creating the Thing's Secret failed; retrying with backoff");
                if failures == 1 {
                    self.record(
                        &c.key,
                        Some(c.thing.uid.clone()),
                        EventType::Warning,
                        "SecretCreateFailed",
                        e.to_string(),
                    )
                    .await;
                }
            }
        }
    }

    /// Creates the Secret; `Ok(false)` when it already exists (brought by the user meanwhile).
    async fn try_create(&self, c: &Create) -> Result<bool, Error> {
        let key = fleetward_policy::generate_thing_key().map_err(|e| Error::KeyGeneration {
            key: c.key.clone(),
            message: e.to_string(),
        })?;
        let secret = thing_secret(&c.thing, &c.secret_name, &key);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &c.thing.namespace);
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        let created = match api.create(&params, &secret).await {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.is_already_exists() => false,
            Err(source) => {
                return Err(Error::SecretCreate {
                    namespace: c.thing.namespace.clone(),
                    name: c.secret_name.clone(),
                    thing: c.thing.name.clone(),
                    source,
                });
            }
        };
        // Do not create it twice before the watch reports it.
        self.observed
            .secret_applied(&c.thing.namespace, &c.secret_name);
        Ok(created)
    }

    async fn rotated(&self, r: &Rotation) {
        let note = format!(
            "Secret {}/{} now holds {} keys (was {}); every key entry authenticates the thing \
             until it is removed",
            r.key.namespace, r.secret_name, r.after, r.before
        );
        tracing::info!(thing = %r.key, before = r.before, after = r.after, "the Thing's keys changed");
        self.record(
            &r.key,
            r.uid.clone(),
            EventType::Normal,
            "KeysChanged",
            note,
        )
        .await;
    }

    async fn record(
        &self,
        key: &ObjectKey,
        uid: Option<String>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "ReconcileCredentials".to_owned(),
            secondary: None,
        };
        if let Err(e) = self
            .events
            .publish(&event, &object_reference(key, uid))
            .await
        {
            tracing::debug!(thing = %key, error = %e, "recording an Event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::events::Reporter;

    use super::*;
    use crate::index::Index;
    use crate::k8s::fixtures::{self, FakeApi};
    use crate::resource::Resource;

    /// A leading reconciler over Tenant acme with `things` Things that have their Secret; it
    /// leads while the sender lives.
    fn reconciler(api: &FakeApi, things: usize) -> (SecretReconciler, watch::Sender<bool>) {
        let mut idx = Index::new();
        let mut objects = vec![fixtures::tenant("acme")];
        for i in 0..things {
            objects.push(fixtures::thing_secret("acme", &format!("t{i}")));
            objects.push(fixtures::thing("acme", &format!("t{i}")));
        }
        let observed = fixtures::listed();
        observed.secrets_watched("acme");
        observed.reset_secrets(
            "acme",
            (0..things).map(|i| format!("t{i}-credentials")).collect(),
        );
        for object in objects {
            if let Some((key, shown)) = fixtures::shown(&object) {
                observed.set(key, shown);
            }
            idx.apply(object);
        }
        let index = Arc::new(SharedIndex::new(idx));
        index.commit();
        let reporter = Reporter {
            controller: "fleetward-test".into(),
            instance: None,
        };
        let (leader, leading) = watch::channel(true);
        let reconciler = SecretReconciler {
            client: api.client(),
            index,
            observed: Arc::new(observed),
            metrics: Arc::new(Metrics::new()),
            leader: leading,
            events: Events::new(api.client(), reporter),
        };
        (reconciler, leader)
    }

    /// Applies `object` as the watches would, and commits.
    fn apply(r: &SecretReconciler, object: Resource) {
        if let Some((key, shown)) = fixtures::shown(&object) {
            r.observed.set(key, shown);
        }
        r.index.update(|idx| idx.apply(object));
        r.index.commit();
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_touching_one_thing_plans_that_thing_and_the_resync_plans_every_one() {
        let api = FakeApi::default();
        let (r, _leader) = reconciler(&api, 50);
        let mut memory = r.memory();
        let now = Instant::now();
        assert_eq!(memory.scope(now), None, "the first round plans everything");
        let plan = r.plan(&mut memory, None, now);
        assert!(plan.creates.is_empty(), "every Thing has its Secret");
        assert_eq!(r.metrics.plans(PLANNER), (50, 1));

        apply(&r, fixtures::thing("acme", "new"));
        let new = ObjectKey::namespaced(Kind::Thing, "acme", "new");
        let scope = memory.scope(now).expect("only what changed");
        assert_eq!(scope, [new], "the Thing, not its Tenant's new count");
        let plan = r.plan(&mut memory, Some(&scope), now);
        assert_eq!(plan.creates.len(), 1);
        assert_eq!(plan.creates[0].secret_name, "new-credentials");
        assert_eq!(r.metrics.plans(PLANNER), (51, 1));

        assert_eq!(memory.scope(now), Some(Vec::new()), "nothing changed since");
        assert_eq!(
            memory.scope(now + RESYNC),
            None,
            "the resync plans everything"
        );
        r.plan(&mut memory, None, now + RESYNC);
        assert_eq!(r.metrics.plans(PLANNER), (51 + 51, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_secret_is_created_once_however_many_commits_follow() {
        let api = FakeApi::default();
        let (r, _leader) = reconciler(&api, 3);
        let index = r.index.clone();
        let observed = r.observed.clone();
        let metrics = r.metrics.clone();
        let task = tokio::spawn(r.run());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let shown = |name: &str| fixtures::shown(&fixtures::thing("acme", name));
        for name in ["new", "other"] {
            let (key, s) = shown(name).expect("a Thing");
            observed.set(key, s);
            index.update(|idx| idx.apply(fixtures::thing("acme", name)));
            index.commit();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        for i in 0..5 {
            index.update(|idx| idx.apply(fixtures::channel("acme", &format!("c{i}"))));
            index.commit();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let creates: Vec<String> = api
            .calls()
            .iter()
            .filter(|c| c.method == http::Method::POST && c.path.ends_with("/secrets"))
            .map(|c| {
                c.body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(creates, ["new-credentials", "other-credentials"]);
        let (planned, full) = metrics.plans(PLANNER);
        assert_eq!(full, 1);
        assert!(
            planned <= 3 + 2 * 2,
            "{planned}: each new Thing, once or twice"
        );
        task.abort();
    }

    fn thing() -> ThingRef {
        ThingRef {
            namespace: "acme".into(),
            name: "sensor-1".into(),
            uid: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
        }
    }

    #[test]
    fn a_generated_secret_is_owned_by_its_thing() {
        let secret = thing_secret(&thing(), "sensor-1-credentials", "k");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("sensor-1-credentials")
        );
        assert_eq!(secret.metadata.namespace.as_deref(), Some("acme"));
        let owners = secret
            .metadata
            .owner_references
            .expect("an owner reference");
        assert_eq!(owners.len(), 1);
        let owner = &owners[0];
        assert_eq!(owner.api_version, "fleetward.io/v1alpha1");
        assert_eq!(owner.kind, "Thing");
        assert_eq!(owner.name, "sensor-1");
        assert_eq!(owner.uid, "7c9e6679-7425-40de-944b-e07fc1f90ae7");
        assert_eq!(owner.controller, Some(true));
        let labels = secret.metadata.labels.expect("labels");
        assert_eq!(labels[LABEL_THING], "sensor-1");
        assert_eq!(labels[LABEL_MANAGED_BY], FIELD_MANAGER);
    }

    #[test]
    fn a_generated_key_is_256_bits_of_base64url_that_the_index_accepts() {
        let key = fleetward_policy::generate_thing_key().expect("a key");
        assert_eq!(key.len(), 43, "32 bytes in unpadded base64url");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(key.len() >= crate::index::MIN_KEY_LEN);
        let other = fleetward_policy::generate_thing_key().expect("a key");
        assert_ne!(key, other);

        let secret = thing_secret(&thing(), "sensor-1-credentials", &key);
        let data = crate::resource::secret_data(&secret).expect("named");
        assert_eq!(data.entries[KEY_ENTRY], key.as_bytes());
        assert!(crate::index::is_key_entry(KEY_ENTRY));
    }

    #[test]
    fn the_secret_serializes_with_base64_data_as_the_api_server_expects() {
        let secret = thing_secret(&thing(), "s", "abc");
        let json = serde_json::to_value(&secret).expect("serializable");
        assert_eq!(json["data"]["key"], "YWJj");
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "Thing");
    }
}
