//! Watches of the six Fleetward kinds (cluster-wide) and of Secrets (only in namespaces a Tenant claims), feeding the index.
//!
//! Fleetward objects are watched through kube's `DeserializeGuard`, so an object that does not
//! deserialize is logged, counted and left out instead of failing the whole list. Each object
//! read is converted to the index's domain input at once (`crate::resource`): neither a relist
//! nor the index holds Kubernetes objects, their managed fields, annotations or statuses.
//!
//! Secrets are watched per claimed namespace, not cluster-wide: the operator then never reads
//! or holds Secrets outside tenant namespaces (kube-system, other applications), and its Secret
//! permissions can be granted namespace by namespace. A bring-your-own Secret is seen because
//! it lives in the tenant's namespace, whatever its labels.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_crds::{Channel, Connection, Group, Policy, Tenant, Thing, User};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::core::{DeserializeGuard, ObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::{AbortHandle, JoinSet};

use super::observed::{Observed, Shown, ShownStatus, revision};
use super::resume::Resume;
use crate::index::{Kind, Object, ObjectKey, SecretData};
use crate::metrics::Metrics;
use crate::resource;
use crate::shared::SharedIndex;

/// What the watches feed.
#[derive(Clone, Debug)]
pub struct Feed {
    /// The index.
    pub index: Arc<SharedIndex>,
    /// What the API server shows.
    pub observed: Arc<Observed>,
    /// Watch errors and skipped objects.
    pub metrics: Arc<Metrics>,
}

/// A Fleetward kind the operator watches.
trait Watched:
    Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + Sync + 'static
{
    const KIND: Kind;
    fn into_resource(self) -> resource::Resource;
    fn shown_status(&self) -> Option<ShownStatus>;
}

macro_rules! watched {
    ($t:ty, $kind:ident, $status:ident) => {
        impl Watched for $t {
            const KIND: Kind = Kind::$kind;
            fn into_resource(self) -> resource::Resource {
                resource::Resource::$kind(self)
            }
            fn shown_status(&self) -> Option<ShownStatus> {
                // A Channel's `status.history` is the writer's; the operator compares the rest.
                self.status.clone().map(|s| ShownStatus::$status(s.into()))
            }
        }
    };
}
watched!(Tenant, Tenant, Tenant);
watched!(Thing, Thing, Thing);
watched!(Channel, Channel, Resource);
watched!(Connection, Connection, Resource);
watched!(User, User, Resource);
watched!(Group, Group, Resource);
watched!(Policy, Policy, Policy);

/// Starts every watch on `tasks`: the seven kinds, and the Secrets of each claimed namespace.
/// A kind in `resume` was restored from the saved state: its watch resumes from there
/// instead of listing (`super::resume`).
pub fn spawn_all(tasks: &mut JoinSet<&'static str>, client: &Client, feed: &Feed, resume: &Resume) {
    tasks.spawn(watch_kind::<Tenant>(client.clone(), feed.clone(), resume));
    tasks.spawn(watch_kind::<Thing>(client.clone(), feed.clone(), resume));
    tasks.spawn(watch_kind::<Channel>(client.clone(), feed.clone(), resume));
    tasks.spawn(watch_kind::<Connection>(
        client.clone(),
        feed.clone(),
        resume,
    ));
    tasks.spawn(watch_kind::<User>(client.clone(), feed.clone(), resume));
    tasks.spawn(watch_kind::<Group>(client.clone(), feed.clone(), resume));
    tasks.spawn(watch_kind::<Policy>(client.clone(), feed.clone(), resume));
    tasks.spawn(watch_tenant_secrets(client.clone(), feed.clone()));
}

fn key_of(kind: Kind, meta: &ObjectMeta) -> Option<ObjectKey> {
    let name = meta.name.clone()?;
    Some(if kind == Kind::Tenant {
        ObjectKey::tenant(name)
    } else {
        ObjectKey::namespaced(kind, meta.namespace.clone()?, name)
    })
}

fn shown<K: Watched>(object: &K) -> Shown {
    let meta = object.meta();
    Shown {
        uid: meta.uid.clone(),
        generation: meta.generation,
        deleting: meta.deletion_timestamp.is_some(),
        status: object.shown_status(),
    }
}

/// One object read: its key, what the API server shows of it, and its input to the index.
struct Read {
    key: ObjectKey,
    shown: Shown,
    object: Object,
}

/// A list in progress. Each object is applied to the index as it arrives, so a list of 100k
/// objects never waits in a vector beside the index (at a cold start, that vector and its
/// growth were a fifth of the operator's peak); quietly, so that the batcher commits the
/// list's objects together when it ends, and the consumers of changes wake once, then. What
/// existed before the list and was not listed is forgotten when it ends: only then are the
/// listed keys kept, so a first list keeps none.
#[derive(Default)]
struct List {
    /// The keys listed so far, when objects of the kind existed before the list.
    seen: Option<HashSet<ObjectKey>>,
    count: usize,
    /// The newest resourceVersion of the objects listed.
    version: u64,
}

impl List {
    fn start(kind: Kind, feed: &Feed) -> Self {
        let existed = feed.index.read().has_any(kind) || feed.observed.has_any(kind);
        Self {
            seen: existed.then(HashSet::new),
            count: 0,
            version: 0,
        }
    }

    /// Notes a listed object's resourceVersion.
    fn saw(&mut self, meta: &ObjectMeta) {
        let version = revision(meta.resource_version.as_deref());
        self.version = self.version.max(version.unwrap_or(0));
    }

    fn apply(&mut self, feed: &Feed, read: Read) {
        if let Some(seen) = &mut self.seen {
            seen.insert(read.key.clone());
        }
        self.count += 1;
        let Read { key, shown, object } = read;
        if let Object::Tenant(t) = &object {
            feed.observed.claim(&key.name, &t.namespace);
        }
        feed.index.update_quietly(|idx| idx.apply(object));
        feed.observed.record(key, shown);
    }

    fn finish(self, kind: Kind, feed: &Feed) {
        if let Some(seen) = self.seen {
            let mut gone: BTreeSet<ObjectKey> =
                feed.index.read().keys_of(kind).into_iter().collect();
            gone.extend(feed.observed.keys_of(kind));
            for key in gone.iter().filter(|k| !seen.contains(*k)) {
                forget(feed, key);
            }
        }
        feed.index.wake();
        // Every change up to the newest object listed is in the list: a watch resumed from
        // there misses nothing (changes after it that the list has too are sent again).
        if self.version > 0 {
            feed.observed.seen_version(kind, self.version);
        }
        feed.observed.listed(kind);
        tracing::info!(kind = kind.as_str(), count = self.count, "listed");
    }
}

fn read<K: Watched>(object: K) -> Option<Read> {
    let key = key_of(K::KIND, object.meta())?;
    let shown = shown(&object);
    let object = Object::from(object.into_resource());
    Some(Read { key, shown, object })
}

/// The object a guarded watch read; `None` (logged and counted) when it did not deserialize,
/// with its key when its metadata named it.
fn parse<K: Watched>(
    object: DeserializeGuard<K>,
    metrics: &Metrics,
) -> Result<K, Option<ObjectKey>> {
    match object.0 {
        Ok(object) => Ok(object),
        Err(invalid) => {
            let key = key_of(K::KIND, &invalid.metadata);
            metrics.object_skipped(K::KIND);
            match &key {
                Some(key) => tracing::warn!(
                    object = %key,
                    error = %invalid.error,
                    "skipping an object that does not deserialize; fix it (kubectl edit) and the \
                     operator picks it up"
                ),
                None => tracing::warn!(
                    kind = K::KIND.as_str(),
                    error = %invalid.error,
                    "skipping an unnamed object"
                ),
            }
            Err(key)
        }
    }
}

/// How a watch learns what exists before it watches. First as a streaming list: the API server
/// sends the objects from its watch cache as watch events (KEP-3157), which at 100k objects
/// takes about half the time of a paginated list read from etcd. Where the API server refuses
/// one (before Kubernetes 1.32, or with its `WatchList` feature gate off), as a paginated list.
fn list_config(streaming: bool) -> watcher::Config {
    let config = watcher::Config::default();
    if streaming {
        config.streaming_lists()
    } else {
        config
    }
}

/// Whether the API server refused to start a streaming list (`sendInitialEvents`): it answers
/// 400 or 422 when it does not know the parameter or its feature gate is off.
fn refuses_streaming_list(error: &watcher::Error) -> bool {
    let code = match error {
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    matches!(code, 400 | 422)
}

/// Why a watch stopped.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Its stream ended (the task is shutting down).
    Closed,
    /// The API server refused a streaming list before the first one completed.
    NoStreamingList,
}

type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// Runs `run` on a watch of `api` that lists with a streaming list, and again on one that
/// lists page by page once the API server refused that. Returns when `run`'s stream ends.
async fn watch_with_fallback<K, Run, Fut>(api: Api<K>, watch: &str, mut run: Run)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
    Run: FnMut(Events<K>, bool) -> Fut,
    Fut: Future<Output = Ended>,
{
    let mut streaming = true;
    loop {
        let stream = watcher::watcher(api.clone(), list_config(streaming)).default_backoff();
        match run(stream.boxed(), streaming).await {
            Ended::Closed => return,
            Ended::NoStreamingList => {
                tracing::info!(
                    watch,
                    "the API server does not serve streaming lists; listing page by page"
                );
                streaming = false;
            }
        }
    }
}

/// Watches one kind cluster-wide: from `resume` when it was restored from the saved state,
/// until the API server no longer has the history since; then (or at once) by listing it.
/// Runs until the task is dropped.
fn watch_kind<K: Watched>(
    client: Client,
    feed: Feed,
    resume: &Resume,
) -> impl Future<Output = &'static str> + Send + 'static {
    let resume = resume.get(&K::KIND).cloned();
    async move {
        let api: Api<DeserializeGuard<K>> = Api::all(client);
        if let Some(version) = resume {
            resume_kind::<K>(&api, &feed, version).await;
            tracing::info!(
                kind = K::KIND.as_str(),
                "the API server no longer has the changes since the saved state; listing the kind"
            );
        }
        watch_with_fallback(api, K::KIND.as_str(), |stream, streaming| {
            run_kind::<K>(stream, &feed, streaming)
        })
        .await;
        K::KIND.as_str()
    }
}

async fn run_kind<K: Watched>(
    stream: impl Stream<Item = Result<Event<DeserializeGuard<K>>, watcher::Error>>,
    feed: &Feed,
    streaming: bool,
) -> Ended {
    futures::pin_mut!(stream);
    let mut list = List::default();
    let mut listed = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => list = List::start(K::KIND, feed),
            Ok(Event::InitApply(o)) => {
                list.saw(o.meta());
                if let Some(read) = parse::<K>(o, &feed.metrics).ok().and_then(read) {
                    list.apply(feed, read);
                }
            }
            Ok(Event::InitDone) => {
                listed = true;
                std::mem::take(&mut list).finish(K::KIND, feed);
            }
            Ok(Event::Apply(o)) => applied::<K>(feed, o),
            Ok(Event::Delete(o)) => deleted::<K>(feed, &o),
            Err(e) if streaming && !listed && refuses_streaming_list(&e) => {
                return Ended::NoStreamingList;
            }
            Err(e) => {
                feed.metrics.watch_error(K::KIND);
                tracing::warn!(kind = K::KIND.as_str(), error = %e, "watch failed; retrying with backoff");
            }
        }
    }
    Ended::Closed
}

/// An object added or changed: applied (or forgotten when it no longer deserializes: what
/// cannot be read is no longer served); then its resourceVersion is recorded.
fn applied<K: Watched>(feed: &Feed, o: DeserializeGuard<K>) {
    let version = revision(o.meta().resource_version.as_deref());
    match parse::<K>(o, &feed.metrics) {
        Ok(object) => {
            if let Some(read) = read(object) {
                apply(feed, read);
            }
        }
        Err(Some(key)) => forget(feed, &key),
        Err(None) => {}
    }
    if let Some(version) = version {
        feed.observed.seen_version(K::KIND, version);
    }
}

/// An object deleted: forgotten; then the deletion's resourceVersion is recorded.
fn deleted<K: Watched>(feed: &Feed, o: &DeserializeGuard<K>) {
    if let Some(key) = key_of(K::KIND, o.meta()) {
        forget(feed, &key);
    }
    if let Some(version) = revision(o.meta().resource_version.as_deref()) {
        feed.observed.seen_version(K::KIND, version);
    }
}

/// How long a resumed watch asks the API server to keep it open before it is started again
/// from its last resourceVersion (the API server's own default is about as long).
const RESUMED_WATCH_SECONDS: u32 = 290;

/// Watches `K` from resourceVersion `version` on, as restored from the saved state, with
/// bookmarks so the version keeps up on a quiet kind. A watch that fails or ends is started
/// again from where it got, after a backoff when it failed. Returns once the API server no
/// longer has the history since (410 Gone).
async fn resume_kind<K: Watched>(api: &Api<DeserializeGuard<K>>, feed: &Feed, mut version: String) {
    use backon::BackoffBuilder as _;
    let mut waits = resume_backoff().build();
    loop {
        // Bookmarks are on by default: they keep the version moving on a quiet kind.
        let params = WatchParams::default().timeout(RESUMED_WATCH_SECONDS);
        let started = Instant::now();
        let failed = match api.watch(&params, &version).await {
            Ok(stream) => match follow::<K>(stream, feed, &mut version).await {
                Followed::Expired => return,
                // One that ends at once is retried as a failure, so it cannot spin.
                Followed::Ended => started.elapsed() < Duration::from_secs(1),
                Followed::Broke => true,
            },
            Err(kube::Error::Api(status)) if status.code == 410 => return,
            Err(e) => {
                feed.metrics.watch_error(K::KIND);
                tracing::warn!(kind = K::KIND.as_str(), error = %e, "resuming the watch failed; retrying with backoff");
                true
            }
        };
        if failed {
            tokio::time::sleep(waits.next().unwrap_or(RESUME_RETRY_MAX)).await;
        } else {
            waits = resume_backoff().build();
        }
    }
}

const RESUME_RETRY_MAX: Duration = Duration::from_secs(30);

fn resume_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(RESUME_RETRY_MAX)
        .without_max_times()
}

/// How a resumed watch's stream ended.
#[derive(Debug, PartialEq, Eq)]
enum Followed {
    /// The API server no longer has the history since `version` (410 Gone).
    Expired,
    /// It ended (its timeout): start it again.
    Ended,
    /// It failed: start it again after a backoff.
    Broke,
}

/// Applies a resumed watch's events, keeping `version` at the last one applied (or
/// bookmarked), until its stream ends.
async fn follow<K: Watched>(
    stream: impl Stream<Item = Result<WatchEvent<DeserializeGuard<K>>, kube::Error>>,
    feed: &Feed,
    version: &mut String,
) -> Followed {
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                resume_after(version, o.meta());
                applied::<K>(feed, o);
            }
            Ok(WatchEvent::Deleted(o)) => {
                resume_after(version, o.meta());
                deleted::<K>(feed, &o);
            }
            Ok(WatchEvent::Bookmark(bookmark)) => {
                *version = bookmark.metadata.resource_version;
                if let Some(seen) = revision(Some(version)) {
                    feed.observed.seen_version(K::KIND, seen);
                }
            }
            Ok(WatchEvent::Error(e)) if e.code == 410 => return Followed::Expired,
            Ok(WatchEvent::Error(e)) => return broke::<K>(feed, &e),
            Err(e) => return broke::<K>(feed, &e),
        }
    }
    Followed::Ended
}

/// The watch, started again, resumes after this event.
fn resume_after(version: &mut String, meta: &ObjectMeta) {
    if let Some(v) = &meta.resource_version {
        version.clone_from(v);
    }
}

/// A resumed watch that failed: counted and logged.
fn broke<K: Watched>(feed: &Feed, error: &dyn std::fmt::Display) -> Followed {
    feed.metrics.watch_error(K::KIND);
    tracing::warn!(kind = K::KIND.as_str(), error = %error, "the resumed watch failed; resuming it again");
    Followed::Broke
}

fn apply(feed: &Feed, Read { key, shown, object }: Read) {
    if let Object::Tenant(t) = &object {
        feed.observed.claim(&key.name, &t.namespace);
    }
    feed.index.update(|idx| idx.apply(object));
    feed.observed.set(key, shown);
}

fn forget(feed: &Feed, key: &ObjectKey) {
    feed.index.update(|idx| idx.delete(key));
    if key.kind == Kind::Tenant {
        feed.observed.unclaim(&key.name);
    }
    feed.observed.remove(key);
}

/// Keeps one Secret watch per namespace claimed by a Tenant. Runs until the task is dropped.
async fn watch_tenant_secrets(client: Client, feed: Feed) -> &'static str {
    let mut claimed = feed.observed.claimed();
    let mut running: HashMap<String, AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let namespaces: BTreeSet<String> = claimed.borrow_and_update().clone();
        running.retain(|ns, task| {
            if namespaces.contains(ns) {
                return true;
            }
            task.abort();
            let names = feed.observed.secrets_unwatched(ns);
            feed.index.update(|idx| {
                for name in names {
                    idx.delete(&ObjectKey::namespaced(Kind::Secret, ns.clone(), name));
                }
            });
            tracing::info!(namespace = %ns, "stopped watching Secrets: no Tenant claims the namespace");
            false
        });
        for ns in namespaces {
            if running.contains_key(&ns) {
                continue;
            }
            feed.observed.secrets_watched(&ns);
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let task = tasks.spawn(watch_secrets(api, ns.clone(), feed.clone()));
            running.insert(ns, task);
        }
        tokio::select! {
            changed = claimed.changed() => {
                if changed.is_err() {
                    return "Secret";
                }
            }
            // Reap finished (aborted) watches so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Watches the Secrets of one namespace, as [`watch_kind`] does a kind.
async fn watch_secrets(api: Api<Secret>, namespace: String, feed: Feed) {
    let watch = format!("Secrets in {namespace}");
    watch_with_fallback(api, &watch, |stream, streaming| {
        run_secrets(stream, namespace.clone(), feed.clone(), streaming)
    })
    .await;
}

async fn run_secrets(
    stream: impl Stream<Item = Result<Event<Secret>, watcher::Error>>,
    namespace: String,
    feed: Feed,
    streaming: bool,
) -> Ended {
    futures::pin_mut!(stream);
    let mut init: Vec<SecretData> = Vec::new();
    let mut listed = false;
    let key = |name: &str| ObjectKey::namespaced(Kind::Secret, namespace.clone(), name);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => init.clear(),
            Ok(Event::InitApply(s)) => init.extend(resource::secret_data(&s)),
            Ok(Event::InitDone) => {
                listed = true;
                let secrets = std::mem::take(&mut init);
                let names: BTreeSet<String> = secrets.iter().map(|s| s.name.clone()).collect();
                let count = names.len();
                let gone = feed.observed.reset_secrets(&namespace, names);
                feed.index.update(|idx| {
                    for name in &gone {
                        idx.delete(&key(name));
                    }
                    for secret in secrets {
                        idx.apply(Object::Secret(secret));
                    }
                });
                tracing::info!(namespace = %namespace, count, "listed Secrets");
            }
            Ok(Event::Apply(s)) => {
                if let Some(data) = resource::secret_data(&s) {
                    let name = data.name.clone();
                    feed.index.update(|idx| idx.apply(Object::Secret(data)));
                    feed.observed.secret_applied(&namespace, &name);
                }
            }
            Ok(Event::Delete(s)) => {
                if let Some(name) = s.metadata.name.as_deref() {
                    feed.index.update(|idx| idx.delete(&key(name)));
                    feed.observed.secret_deleted(&namespace, name);
                }
            }
            Err(e) if streaming && !listed && refuses_streaming_list(&e) => {
                return Ended::NoStreamingList;
            }
            Err(e) => {
                feed.metrics.watch_error(Kind::Secret);
                tracing::warn!(namespace = %namespace, error = %e, "Secret watch failed; retrying with backoff");
            }
        }
    }
    Ended::Closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    fn feed() -> Feed {
        Feed {
            index: Arc::new(SharedIndex::new(Index::new())),
            observed: Arc::new(Observed::new()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn guarded<K: Watched>(value: serde_json::Value) -> DeserializeGuard<K> {
        serde_json::from_value(value).expect("an object with metadata")
    }

    fn channel(name: &str, max_qos: serde_json::Value) -> DeserializeGuard<Channel> {
        guarded(serde_json::json!({
            "apiVersion": "fleetward.io/v1alpha1",
            "kind": "Channel",
            "metadata": {"name": name, "namespace": "acme", "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"maxQos": max_qos},
        }))
    }

    #[tokio::test]
    async fn an_object_that_does_not_deserialize_is_skipped_and_the_rest_is_listed() {
        let feed = feed();
        let events: Vec<Result<Event<DeserializeGuard<_>>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(channel("telemetry", serde_json::json!(1)))),
            Ok(Event::InitApply(channel(
                "broken",
                serde_json::json!("high"),
            ))),
            Ok(Event::InitDone),
        ];
        run_kind::<Channel>(futures::stream::iter(events), &feed, true).await;
        let telemetry = ObjectKey::namespaced(Kind::Channel, "acme", "telemetry");
        let broken = ObjectKey::namespaced(Kind::Channel, "acme", "broken");
        assert_eq!(
            feed.observed.shown(&telemetry).and_then(|s| s.uid),
            Some("uid-telemetry".to_owned())
        );
        assert!(feed.observed.shown(&broken).is_none());
        feed.index.commit();
        let idx = feed.index.read();
        assert!(
            idx.status(&telemetry).is_some(),
            "the readable channel is indexed"
        );
        assert!(idx.status(&broken).is_none(), "the unreadable one is not");
        drop(idx);
        let text = feed.metrics.render(
            &feed.index,
            &crate::dataplanes::Dataplanes::new(),
            &crate::replicas::Replicas::new(),
        );
        assert!(
            text.contains("fleetward_operator_objects_skipped_total{kind=\"Channel\"} 1\n"),
            "the unreadable one is counted: {text}"
        );
    }

    #[tokio::test]
    async fn an_update_that_no_longer_deserializes_removes_the_old_version() {
        let feed = feed();
        let events: Vec<Result<Event<DeserializeGuard<_>>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(channel("telemetry", serde_json::json!(1)))),
            Ok(Event::InitDone),
            Ok(Event::Apply(channel(
                "telemetry",
                serde_json::json!("high"),
            ))),
        ];
        run_kind::<Channel>(futures::stream::iter(events), &feed, true).await;
        let key = ObjectKey::namespaced(Kind::Channel, "acme", "telemetry");
        feed.index.commit();
        assert!(feed.index.read().status(&key).is_none());
        assert!(feed.observed.shown(&key).is_none());
    }

    #[tokio::test]
    async fn a_relist_forgets_what_it_did_not_list_even_after_a_broken_first_list() {
        let feed = feed();
        let one = serde_json::json!(1);
        let key = |name: &str| ObjectKey::namespaced(Kind::Channel, "acme", name);
        let known = |name: &str| {
            feed.index.read().status(&key(name)).is_some()
                && feed.observed.shown(&key(name)).is_some()
        };
        let events: Vec<Result<Event<DeserializeGuard<_>>, watcher::Error>> = vec![
            // A first list that breaks after one object, then starts again without it.
            Ok(Event::Init),
            Ok(Event::InitApply(channel("deleted-meanwhile", one.clone()))),
            Ok(Event::Init),
            Ok(Event::InitApply(channel("a", one.clone()))),
            Ok(Event::InitApply(channel("b", one.clone()))),
            Ok(Event::InitDone),
        ];
        run_kind::<Channel>(futures::stream::iter(events), &feed, true).await;
        feed.index.commit();
        assert!(feed.observed.ready().is_err(), "only Channels have synced");
        assert!(known("a") && known("b"));
        assert!(
            !known("deleted-meanwhile"),
            "the second list did not list it"
        );
        let events: Vec<Result<Event<DeserializeGuard<_>>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(channel("b", one.clone()))),
            Ok(Event::InitApply(channel("c", one))),
            Ok(Event::InitDone),
        ];
        run_kind::<Channel>(futures::stream::iter(events), &feed, true).await;
        feed.index.commit();
        assert!(!known("a"), "a relist forgets what it did not list");
        assert!(known("b") && known("c"));
    }

    #[tokio::test]
    async fn tenants_claim_namespaces_and_a_relist_drops_the_gone() {
        let feed = feed();
        let tenant = |name: &str, ns: Option<&str>| {
            guarded::<Tenant>(serde_json::json!({
                "apiVersion": "fleetward.io/v1alpha1",
                "kind": "Tenant",
                "metadata": {"name": name, "uid": name, "generation": 1},
                "spec": {"namespace": ns},
            }))
        };
        let events: Vec<Result<Event<DeserializeGuard<_>>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(tenant("acme", None))),
            Ok(Event::InitApply(tenant("globex", Some("globex-prod")))),
            Ok(Event::InitDone),
            Ok(Event::Delete(tenant("acme", None))),
        ];
        run_kind::<Tenant>(futures::stream::iter(events), &feed, true).await;
        assert_eq!(
            *feed.observed.claimed().borrow(),
            BTreeSet::from(["globex-prod".to_owned()])
        );
    }

    #[tokio::test]
    async fn secrets_of_a_namespace_are_indexed_and_a_relist_removes_the_gone() {
        let feed = feed();
        feed.observed.secrets_watched("acme");
        let secret = |name: &str| {
            let mut s = Secret::default();
            s.metadata.name = Some(name.to_owned());
            s.metadata.namespace = Some("acme".to_owned());
            s
        };
        let events: Vec<Result<Event<Secret>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(secret("a-credentials"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(secret("b-credentials"))),
            Ok(Event::Init),
            Ok(Event::InitApply(secret("b-credentials"))),
            Ok(Event::InitDone),
        ];
        run_secrets(
            futures::stream::iter(events),
            "acme".to_owned(),
            feed.clone(),
            true,
        )
        .await;
        assert_eq!(
            feed.observed.secret_exists("acme", "a-credentials"),
            Some(false)
        );
        assert_eq!(
            feed.observed.secret_exists("acme", "b-credentials"),
            Some(true)
        );
    }

    fn refused(code: u16) -> watcher::Error {
        let status = kube::core::Status::failure("sendInitialEvents is forbidden", "Invalid")
            .with_code(code);
        watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(status)))
    }

    #[tokio::test]
    async fn a_refused_streaming_list_falls_back_to_a_paginated_one_before_the_first_list_only() {
        let refused_first: Vec<Result<Event<DeserializeGuard<Channel>>, watcher::Error>> =
            vec![Err(refused(422))];
        let feed = feed();
        let ended = run_kind::<Channel>(futures::stream::iter(refused_first), &feed, true).await;
        assert_eq!(ended, Ended::NoStreamingList);

        // Listing page by page already: an error is retried, as any other.
        let paginated: Vec<Result<Event<DeserializeGuard<Channel>>, watcher::Error>> =
            vec![Err(refused(400)), Ok(Event::Init), Ok(Event::InitDone)];
        let ended = run_kind::<Channel>(futures::stream::iter(paginated), &feed, false).await;
        assert_eq!(ended, Ended::Closed);

        // Once a streaming list completed, a later refusal is a watch error (retried).
        let later: Vec<Result<Event<DeserializeGuard<Channel>>, watcher::Error>> =
            vec![Ok(Event::Init), Ok(Event::InitDone), Err(refused(400))];
        let ended = run_kind::<Channel>(futures::stream::iter(later), &feed, true).await;
        assert_eq!(ended, Ended::Closed);
        let text = feed.metrics.render(
            &feed.index,
            &crate::dataplanes::Dataplanes::new(),
            &crate::replicas::Replicas::new(),
        );
        assert!(
            text.contains("fleetward_operator_watch_errors_total{kind=\"Channel\"} 2\n"),
            "the two errors that were not refusals of a first streaming list count: {text}"
        );

        // Other failures (a forbidden watch, the server gone) are not refusals.
        assert!(!refuses_streaming_list(&refused(403)));
        assert!(!refuses_streaming_list(&watcher::Error::NoResourceVersion));
        let secrets: Vec<Result<Event<Secret>, watcher::Error>> = vec![Err(refused(400))];
        let ended = run_secrets(futures::stream::iter(secrets), "acme".into(), feed, true).await;
        assert_eq!(ended, Ended::NoStreamingList);
    }

    /// A watch event as the API server sends it.
    fn watch_event(
        value: serde_json::Value,
    ) -> Result<WatchEvent<DeserializeGuard<Channel>>, kube::Error> {
        Ok(serde_json::from_value(value).expect("a watch event"))
    }

    fn channel_at(name: &str, version: u64, max_qos: u8) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "fleetward.io/v1alpha1",
            "kind": "Channel",
            "metadata": {
                "name": name, "namespace": "acme", "uid": format!("uid-{name}"),
                "generation": 1, "resourceVersion": version.to_string(),
            },
            "spec": {"maxQos": max_qos},
        })
    }

    fn status_event(
        code: u16,
        reason: &str,
    ) -> Result<WatchEvent<DeserializeGuard<Channel>>, kube::Error> {
        watch_event(serde_json::json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": reason, "reason": reason, "code": code,
        }}))
    }

    #[tokio::test]
    async fn a_list_records_the_newest_version_it_listed() {
        let feed = feed();
        assert_eq!(feed.observed.version(Kind::Channel), None);
        let events: Vec<Result<Event<DeserializeGuard<_>>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(guarded(channel_at("a", 12, 1)))),
            Ok(Event::InitApply(guarded(channel_at("b", 7, 1)))),
        ];
        run_kind::<Channel>(futures::stream::iter(events), &feed, true).await;
        assert_eq!(
            feed.observed.version(Kind::Channel),
            None,
            "a list not yet done has no version to resume from"
        );
        let events: Vec<Result<Event<DeserializeGuard<_>>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(guarded(channel_at("a", 12, 1)))),
            Ok(Event::InitApply(guarded(channel_at("b", 7, 1)))),
            Ok(Event::InitDone),
            Ok(Event::Delete(guarded(channel_at("b", 20, 1)))),
        ];
        run_kind::<Channel>(futures::stream::iter(events), &feed, true).await;
        assert_eq!(feed.observed.version(Kind::Channel), Some(20));
    }

    #[tokio::test]
    async fn a_resumed_watch_applies_changes_and_deletions_and_follows_bookmarks() {
        let feed = feed();
        let key = |name: &str| ObjectKey::namespaced(Kind::Channel, "acme", name);
        let events: Vec<Result<Event<DeserializeGuard<_>>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(guarded(channel_at("a", 5, 1)))),
            Ok(Event::InitApply(guarded(channel_at("b", 7, 1)))),
            Ok(Event::InitDone),
        ];
        run_kind::<Channel>(futures::stream::iter(events), &feed, true).await;
        let mut version = "7".to_owned();
        let events = vec![
            watch_event(serde_json::json!({"type": "MODIFIED", "object": channel_at("a", 9, 0)})),
            watch_event(serde_json::json!({"type": "DELETED", "object": channel_at("b", 10, 1)})),
            watch_event(serde_json::json!({"type": "ADDED", "object": channel_at("c", 11, 1)})),
        ];
        let ended = follow::<Channel>(futures::stream::iter(events), &feed, &mut version).await;
        assert_eq!(ended, Followed::Ended);
        assert_eq!(version, "11");
        assert_eq!(feed.observed.version(Kind::Channel), Some(11));
        feed.index.commit();
        {
            let idx = feed.index.read();
            assert!(idx.status(&key("a")).is_some() && idx.status(&key("c")).is_some());
            assert!(
                idx.status(&key("b")).is_none(),
                "the deletion since was applied"
            );
            match idx.object(&key("a")) {
                Some(Object::Channel(a)) => {
                    assert_eq!(a.max_qos, 0, "the change since was applied");
                }
                other => panic!("a is a Channel: {other:?}"),
            }
        }
        assert!(feed.observed.shown(&key("b")).is_none());

        let events = vec![watch_event(
            serde_json::json!({"type": "BOOKMARK", "object": {
                "kind": "Channel", "apiVersion": "fleetward.io/v1alpha1",
                "metadata": {"resourceVersion": "40"},
            }}),
        )];
        follow::<Channel>(futures::stream::iter(events), &feed, &mut version).await;
        assert_eq!(
            version, "40",
            "a bookmark moves the version on a quiet kind"
        );
        assert_eq!(feed.observed.version(Kind::Channel), Some(40));
    }

    #[tokio::test]
    async fn a_resumed_watch_tells_a_history_gone_from_a_failure() {
        let feed = feed();
        let mut version = "7".to_owned();
        let gone = vec![status_event(410, "Expired")];
        assert_eq!(
            follow::<Channel>(futures::stream::iter(gone), &feed, &mut version).await,
            Followed::Expired
        );
        let failed = vec![status_event(500, "InternalError")];
        assert_eq!(
            follow::<Channel>(futures::stream::iter(failed), &feed, &mut version).await,
            Followed::Broke
        );
        assert_eq!(version, "7");
    }
}
