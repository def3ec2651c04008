//! The router filters the rumqttd adapter asks for, and the router topic of each message.
//!
//! rumqttd 0.20 keeps a log, an index entry and a waiter queue for every filter it was ever
//! given, and nothing frees them (ROUTER.md §7). So the adapter never gives it a client's
//! filter. It gives it a bounded set of *routes* per channel, named after a *slot* number that
//! the channel holds while any link on this pod has a filter in it:
//!
//! - `<slot>/<bucket>`: the messages of one bucket (a hash of the topic) of the channel, for
//!   links whose filters there name single topics;
//! - `<slot>/+`: every message of the channel, for a link with a wildcard filter there;
//! - `$share/<group>/<slot>/+`: every message of the channel, shared by a group.
//!
//! A message enters the router on `<slot>/<bucket>`, and only when some link holds a route it
//! reaches; its real topic travels in the envelope, and each link matches it against its own
//! filters before handing it on. A link holds either `<slot>/+` or its buckets in a channel,
//! never both, so a message reaches it once. A slot no link holds any more goes back to a free
//! list: the next channel reuses its routes, and the router's per-filter state with them.

use std::collections::hash_map::Entry;
use std::hash::BuildHasher;

use fleetward_policy::filter_matches;
use foldhash::{HashMap, HashSet};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

/// Buckets per channel unless configured: a link whose filters name single topics receives
/// about 1/256 of its channel's traffic beside its own, and a channel costs the router at most
/// 258 filters (the buckets, `+` and one per shared group).
pub const DEFAULT_BUCKETS: u16 = 256;

/// Up to this many filters a link matches a message against each one instead of looking its
/// channel up.
const SMALL: usize = 8;

/// What to tell the router, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Subscribe to a router filter, with a subscription identifier for shared routes.
    Subscribe(String, Option<usize>),
    /// Unsubscribe from a router filter.
    Unsubscribe(String),
}

/// Why a filter cannot be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Unroutable;

/// One channel's slot and who holds its routes (links, counted once each).
struct Channel {
    slot: u32,
    /// Links with any filter in the channel, persistent ones away included.
    links: u32,
    /// Links holding each bucket's route.
    buckets: Box<[u32]>,
    /// Links holding `<slot>/+`.
    all: u32,
    /// Links holding each shared group's route.
    shared: HashMap<Box<str>, u32>,
}

impl Channel {
    fn count(&mut self, route: &Route) -> &mut u32 {
        match route {
            Route::Bucket(b) => &mut self.buckets[usize::from(*b)],
            Route::All => &mut self.all,
            Route::Shared(g) => self.shared.entry(g.clone()).or_insert(0),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Bucket(u16),
    All,
    Shared(Box<str>),
}

fn router_filter(slot: u32, route: &Route) -> String {
    match route {
        Route::Bucket(b) => format!("{slot}/{b}"),
        Route::All => format!("{slot}/+"),
        Route::Shared(g) => format!("$share/{g}/{slot}/+"),
    }
}

/// The pod-wide table of slots and routes.
#[derive(Default)]
pub(super) struct State {
    /// By channel key (`m/<tenant>/c/<channel>`), as bytes: a message's topic is looked up
    /// without checking it is UTF-8 again.
    channels: HashMap<Box<[u8]>, Channel>,
    free: Vec<u32>,
    /// Slots ever made: the router holds at most this many channels' routes.
    slots: u32,
    /// Router filters held by at least one link.
    held: usize,
}

impl State {
    fn join(&mut self, channel: &str, buckets: u16) -> u32 {
        let free = &mut self.free;
        let slots = &mut self.slots;
        let entry = self
            .channels
            .entry(channel.as_bytes().into())
            .or_insert_with(|| {
                let slot = free.pop().unwrap_or_else(|| {
                    *slots += 1;
                    *slots - 1
                });
                Channel {
                    slot,
                    links: 0,
                    buckets: vec![0; usize::from(buckets)].into_boxed_slice(),
                    all: 0,
                    shared: HashMap::default(),
                }
            });
        entry.links += 1;
        entry.slot
    }

    fn leave(&mut self, channel: &str) {
        if let Some(c) = self.channels.get_mut(channel.as_bytes()) {
            c.links -= 1;
            if c.links == 0 {
                self.free.push(c.slot);
                self.channels.remove(channel.as_bytes());
            }
        }
    }

    fn hold(&mut self, channel: &str, route: &Route) {
        if let Some(c) = self.channels.get_mut(channel.as_bytes()) {
            let n = c.count(route);
            *n += 1;
            if *n == 1 {
                self.held += 1;
            }
        }
    }

    fn release(&mut self, channel: &str, route: &Route) {
        if let Some(c) = self.channels.get_mut(channel.as_bytes()) {
            let n = c.count(route);
            if *n == 0 {
                // Not held: nothing to give back (and no shared entry to keep).
                if let Route::Shared(g) = route {
                    c.shared.remove(g);
                }
                return;
            }
            *n -= 1;
            if *n == 0 {
                self.held = self.held.saturating_sub(1);
                if let Route::Shared(g) = route {
                    c.shared.remove(g);
                }
            }
        }
    }

    /// The router topic of a message on `topic`, or `None` when no link on this pod holds a
    /// route it would reach (then the router is not bothered with it).
    pub(super) fn route(&self, topic: &[u8], buckets: &Buckets) -> Option<(u32, u16)> {
        let c = self.channels.get(channel_key_bytes(topic))?;
        let b = buckets.of(topic);
        (c.buckets[usize::from(b)] > 0 || c.all > 0 || !c.shared.is_empty()).then_some((c.slot, b))
    }
}

/// One link's filters, by channel.
#[derive(Default)]
pub(super) struct LinkRoutes {
    /// Every filter as subscribed (subscribing again is a no-op).
    filters: HashSet<Box<str>>,
    channels: HashMap<Box<str>, LinkChannel>,
    /// Shared filters by the subscription identifier their route was given.
    shared_ids: HashMap<usize, Box<str>>,
    next_id: usize,
}

struct LinkChannel {
    slot: u32,
    exact: HashSet<Box<str>>,
    wild: Vec<Box<str>>,
    /// Exact filters per bucket.
    buckets: HashMap<u16, u32>,
    /// Shared routes held: group → (subscription identifier, filter).
    shared: HashMap<Box<str>, usize>,
}

impl LinkChannel {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wild.is_empty() && self.shared.is_empty()
    }
}

impl LinkRoutes {
    /// Whether a message on `topic` is for this link: through a shared route (`ids` are the
    /// subscription identifiers the router stamped), or through its plain filters.
    pub(super) fn accepts(&self, topic: &[u8], ids: &[usize]) -> bool {
        if self.filters.len() <= SMALL && ids.is_empty() {
            // A few filters (most devices): matched one by one, cheaper than the lookups; a
            // filter without wildcards is the topic itself.
            return self.filters.iter().any(|f| {
                !f.starts_with("$share/")
                    && (f.as_bytes() == topic
                        || (has_wildcard(f)
                            && std::str::from_utf8(topic).is_ok_and(|t| filter_matches(f, t))))
            });
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        if !ids.is_empty() {
            return ids.iter().any(|id| {
                self.shared_ids
                    .get(id)
                    .is_some_and(|f| filter_matches(f, topic))
            });
        }
        self.channels.get(channel_key(topic)).is_some_and(|c| {
            c.exact.contains(topic) || c.wild.iter().any(|f| filter_matches(f, topic))
        })
    }

    /// The router filters of this link's shared routes, to renew after any unsubscribe
    /// (rumqttd 0.20 drops a link from every shared group on any unsubscribe).
    pub(super) fn shared_routes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for c in self.channels.values() {
            for (g, id) in &c.shared {
                out.push(Change::Subscribe(
                    router_filter(c.slot, &Route::Shared(g.clone())),
                    Some(*id),
                ));
            }
        }
        out
    }

    /// How many filters the link holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.filters.len()
    }
}

/// The buckets of a channel: how many, and the hash that puts a topic in one. Seeded once per
/// process: buckets only need to agree within the pod's router, and a client cannot aim its
/// topics at another link's bucket.
pub(super) struct Buckets {
    count: u16,
    hasher: foldhash::quality::RandomState,
}

impl Buckets {
    fn new(count: u16) -> Self {
        Self {
            count: count.max(1),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// The bucket of a topic.
    pub(super) fn of(&self, topic: &[u8]) -> u16 {
        (self.hasher.hash_one(topic) % u64::from(self.count)) as u16
    }
}

/// The slot table, the buckets per channel, and the routes of persistent links while away.
pub(super) struct Routes {
    buckets: Buckets,
    state: RwLock<State>,
    saved: Mutex<HashMap<String, LinkRoutes>>,
}

impl Routes {
    pub(super) fn new(buckets: u16) -> Self {
        Self {
            buckets: Buckets::new(buckets),
            state: RwLock::new(State::default()),
            saved: Mutex::new(HashMap::default()),
        }
    }

    pub(super) fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    /// The table, for routing a batch of publishes under one read lock.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// Router filters held by at least one link.
    pub(super) fn held(&self) -> usize {
        self.state.read().held
    }

    /// Adds `filter` (`m/<tenant>/c/<channel>/…`, or `$share/<group>/` and that) to a link.
    pub(super) fn subscribe(
        &self,
        link: &mut LinkRoutes,
        filter: &str,
    ) -> Result<Vec<Change>, Unroutable> {
        if link.filters.contains(filter) {
            return Ok(Vec::new());
        }
        let (group, matcher) = split_share(filter).ok_or(Unroutable)?;
        let key = channel_key(matcher);
        if has_wildcard(key) {
            return Err(Unroutable);
        }
        let mut st = self.state.write();
        let lc = match link.channels.entry(key.into()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(LinkChannel {
                slot: st.join(key, self.buckets.count),
                exact: HashSet::default(),
                wild: Vec::new(),
                buckets: HashMap::default(),
                shared: HashMap::default(),
            }),
        };
        let slot = lc.slot;
        let mut changes = Vec::new();
        match group {
            Some(g) => {
                link.next_id += 1;
                let id = link.next_id;
                lc.shared.insert(g.into(), id);
                link.shared_ids.insert(id, matcher.into());
                let route = Route::Shared(g.into());
                st.hold(key, &route);
                changes.push(Change::Subscribe(router_filter(slot, &route), Some(id)));
            }
            None if has_wildcard(matcher) => {
                lc.wild.push(matcher.into());
                if lc.wild.len() == 1 {
                    // The whole channel now: its buckets' routes are let go, after.
                    st.hold(key, &Route::All);
                    changes.push(Change::Subscribe(router_filter(slot, &Route::All), None));
                    for &b in lc.buckets.keys() {
                        st.release(key, &Route::Bucket(b));
                        changes.push(Change::Unsubscribe(router_filter(slot, &Route::Bucket(b))));
                    }
                }
            }
            None => {
                lc.exact.insert(matcher.into());
                let b = self.buckets.of(matcher.as_bytes());
                let n = lc.buckets.entry(b).or_insert(0);
                *n += 1;
                if *n == 1 && lc.wild.is_empty() {
                    st.hold(key, &Route::Bucket(b));
                    changes.push(Change::Subscribe(
                        router_filter(slot, &Route::Bucket(b)),
                        None,
                    ));
                }
            }
        }
        link.filters.insert(filter.into());
        Ok(changes)
    }

    /// Removes `filter` from a link; a filter it does not hold changes nothing.
    pub(super) fn unsubscribe(&self, link: &mut LinkRoutes, filter: &str) -> Vec<Change> {
        if !link.filters.remove(filter) {
            return Vec::new();
        }
        let Some((group, matcher)) = split_share(filter) else {
            return Vec::new();
        };
        let key = channel_key(matcher);
        let Some(lc) = link.channels.get_mut(key) else {
            return Vec::new();
        };
        let slot = lc.slot;
        let mut st = self.state.write();
        let mut changes = Vec::new();
        match group {
            Some(g) => {
                if let Some(id) = lc.shared.remove(g) {
                    link.shared_ids.remove(&id);
                    let route = Route::Shared(g.into());
                    st.release(key, &route);
                    changes.push(Change::Unsubscribe(router_filter(slot, &route)));
                }
            }
            None if has_wildcard(matcher) => {
                if let Some(i) = lc.wild.iter().position(|f| &**f == matcher) {
                    lc.wild.swap_remove(i);
                }
                if lc.wild.is_empty() {
                    // Back to the buckets: taken before `+` is let go, so nothing is missed.
                    for &b in lc.buckets.keys() {
                        st.hold(key, &Route::Bucket(b));
                        changes.push(Change::Subscribe(
                            router_filter(slot, &Route::Bucket(b)),
                            None,
                        ));
                    }
                    st.release(key, &Route::All);
                    changes.push(Change::Unsubscribe(router_filter(slot, &Route::All)));
                }
            }
            None => {
                lc.exact.remove(matcher);
                let b = self.buckets.of(matcher.as_bytes());
                if let Entry::Occupied(mut e) = lc.buckets.entry(b) {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                        if lc.wild.is_empty() {
                            st.release(key, &Route::Bucket(b));
                            changes
                                .push(Change::Unsubscribe(router_filter(slot, &Route::Bucket(b))));
                        }
                    }
                }
            }
        }
        if lc.is_empty() {
            link.channels.remove(key);
            st.leave(key);
        }
        changes
    }

    /// Lets go of everything a link holds (it detached clean, or was dropped).
    pub(super) fn release(&self, link: LinkRoutes) {
        let mut st = self.state.write();
        for (key, lc) in link.channels {
            if lc.wild.is_empty() {
                for &b in lc.buckets.keys() {
                    st.release(&key, &Route::Bucket(b));
                }
            } else {
                st.release(&key, &Route::All);
            }
            for g in lc.shared.keys() {
                st.release(&key, &Route::Shared(g.clone()));
            }
            st.leave(&key);
        }
    }

    /// Keeps a persistent link's routes while it is away: the router keeps its subscriptions.
    pub(super) fn save(&self, id: String, link: LinkRoutes) {
        if let Some(old) = self.saved.lock().insert(id, link) {
            self.release(old);
        }
    }

    /// The routes a persistent link left, if any.
    pub(super) fn take_saved(&self, id: &str) -> Option<LinkRoutes> {
        self.saved.lock().remove(id)
    }
}

/// `(group, filter)` of `$share/<group>/<filter>`, `(None, filter)` of a plain filter.
fn split_share(filter: &str) -> Option<(Option<&str>, &str)> {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map(|(g, f)| (Some(g), f)),
        None => Some((None, filter)),
    }
}

/// The first four levels of a topic or filter (`m/<tenant>/c/<channel>`), or all of them.
pub(crate) fn channel_key(s: &str) -> &str {
    // Cut at a `/`, so at a char boundary.
    &s[..channel_key_bytes(s.as_bytes()).len()]
}

/// [`channel_key`] of bytes.
fn channel_key_bytes(s: &[u8]) -> &[u8] {
    let mut slashes = 0;
    for (i, b) in s.iter().enumerate() {
        if *b == b'/' {
            slashes += 1;
            if slashes == 4 {
                return &s[..i];
            }
        }
    }
    s
}

fn has_wildcard(s: &str) -> bool {
    s.bytes().any(|b| b == b'+' || b == b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(changes: &[Change]) -> Vec<&str> {
        changes
            .iter()
            .map(|c| match c {
                Change::Subscribe(f, _) | Change::Unsubscribe(f) => f.as_str(),
            })
            .collect()
    }

    #[test]
    fn thousands_of_filters_take_a_bounded_set_of_routes_and_give_them_back() {
        let routes = Routes::new(16);
        let mut link = LinkRoutes::default();
        for i in 0..5_000 {
            routes
                .subscribe(&mut link, &format!("m/t/c/ch/dev-{i}"))
                .expect("routable");
        }
        assert_eq!(link.len(), 5_000);
        assert_eq!(routes.held(), 16, "one route per bucket");
        assert!(link.accepts(b"m/t/c/ch/dev-7", &[]));
        assert!(!link.accepts(b"m/t/c/ch/dev-x", &[]));
        for i in 0..5_000 {
            routes.unsubscribe(&mut link, &format!("m/t/c/ch/dev-{i}"));
        }
        assert_eq!(routes.held(), 0);
        assert!(routes.read().channels.is_empty(), "the slot is free again");
        assert_eq!(routes.read().free, vec![0]);
    }

    #[test]
    fn a_wildcard_takes_the_whole_channel_instead_of_its_buckets_and_back() {
        let routes = Routes::new(4);
        let mut link = LinkRoutes::default();
        let exact = routes.subscribe(&mut link, "m/t/c/ch/a").expect("ok");
        assert_eq!(
            subs(&exact),
            vec![format!("0/{}", routes.buckets().of(b"m/t/c/ch/a"))]
        );
        let wild = routes.subscribe(&mut link, "m/t/c/ch/#").expect("ok");
        // `+` first, then the bucket is let go: one path at any time.
        assert_eq!(wild[0], Change::Subscribe("0/+".into(), None));
        assert!(matches!(&wild[1], Change::Unsubscribe(_)));
        assert_eq!(routes.held(), 1);
        // Overlapping filters: the link is reached once and accepts once.
        assert!(link.accepts(b"m/t/c/ch/a", &[]));
        let back = routes.unsubscribe(&mut link, "m/t/c/ch/#");
        assert!(matches!(&back[0], Change::Subscribe(f, None) if f != "0/+"));
        assert_eq!(back[1], Change::Unsubscribe("0/+".into()));
        assert_eq!(routes.held(), 1);
    }

    #[test]
    fn messages_go_to_the_router_only_where_someone_holds_a_route() {
        let routes = Routes::new(8);
        let mut a = LinkRoutes::default();
        routes.subscribe(&mut a, "m/t/c/ch/x").expect("ok");
        let st = routes.read();
        assert!(st.route(b"m/t/c/ch/x", routes.buckets()).is_some());
        assert!(
            st.route(b"m/t/c/other/x", routes.buckets()).is_none(),
            "no one in that channel"
        );
        drop(st);
        let mut b = LinkRoutes::default();
        routes.subscribe(&mut b, "m/t/c/ch/+").expect("ok");
        assert!(
            routes
                .read()
                .route(b"m/t/c/ch/anything", routes.buckets())
                .is_some()
        );
        routes.release(b);
        routes.release(a);
        assert_eq!(routes.held(), 0);
        assert!(
            routes
                .read()
                .route(b"m/t/c/ch/x", routes.buckets())
                .is_none()
        );
    }

    #[test]
    fn slots_are_recycled_between_channels() {
        let routes = Routes::new(2);
        for i in 0..100 {
            let mut link = LinkRoutes::default();
            routes
                .subscribe(&mut link, &format!("m/t/c/ch-{i}/#"))
                .expect("ok");
            routes.release(link);
        }
        assert_eq!(
            routes.read().slots,
            1,
            "one slot served all hundred channels"
        );
    }

    #[test]
    fn shared_routes_are_tagged_and_match_only_their_filter() {
        let routes = Routes::new(2);
        let mut link = LinkRoutes::default();
        let c = routes
            .subscribe(&mut link, "$share/t~1~g~ab/m/t/c/ch/a/+")
            .expect("ok");
        let Change::Subscribe(f, Some(id)) = &c[0] else {
            panic!("a tagged subscription: {c:?}");
        };
        assert_eq!(f, "$share/t~1~g~ab/0/+");
        assert!(link.accepts(b"m/t/c/ch/a/b", &[*id]));
        assert!(
            !link.accepts(b"m/t/c/ch/z/b", &[*id]),
            "the group's filter decides"
        );
        assert!(!link.accepts(b"m/t/c/ch/a/b", &[]), "no plain filter");
        assert_eq!(link.shared_routes().len(), 1);
        routes.unsubscribe(&mut link, "$share/t~1~g~ab/m/t/c/ch/a/+");
        assert_eq!(routes.held(), 0);
    }

    #[test]
    fn a_filter_with_a_wildcard_channel_is_not_routable() {
        let routes = Routes::new(2);
        let mut link = LinkRoutes::default();
        assert_eq!(routes.subscribe(&mut link, "m/t/c/+/x"), Err(Unroutable));
        assert_eq!(routes.subscribe(&mut link, "#"), Err(Unroutable));
        assert_eq!(routes.held(), 0);
    }
}
