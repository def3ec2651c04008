//! A session's subscriptions and their index, and the Tenant and Channel each was made under.
//!
//! The index finds a subscription by its filter, and the subscriptions that may match a topic,
//! without walking all of them: a SUBSCRIBE costs the same whether the session holds ten filters
//! or ten thousand, and so does a delivery (unless the session's wildcard filters in that one
//! channel are many, which is its own cost only).

use std::collections::hash_map::Entry;
use std::hash::BuildHasher;

use fleetward_policy::{Channel, DeliveryGate, Snapshot, filter_matches};
use foldhash::{HashMap, HashSet};

use crate::router::channel_key;

/// One subscription of a session.
pub(crate) struct Subscription {
    /// The filter as the client sent it (without any mountpoint or `$share/<group>/`).
    pub(crate) client: String,
    /// The full filter as subscribed, `[$share/<group>/]m/<tenant>/c/<channel>/…`.
    pub(crate) full: String,
    /// The full filter without any `$share/<group>/`, matched against topics.
    pub(crate) matcher: String,
    /// What the router was given (shared groups renamed per tenant and filter).
    pub(crate) router: String,
    /// v5 no-local: not to receive its own session's publishes.
    pub(crate) no_local: bool,
    /// v5 retain-as-published: keep the publish's retain flag on live deliveries.
    pub(crate) retain_as_published: bool,
    pub(crate) qos: u8,
    pub(crate) id: Option<usize>,
    /// v5: its SUBSCRIBE asked for delivery metadata (`fleetward-metadata: true`).
    pub(crate) metadata: bool,
    /// The Tenant and Channel it was made under: a saved session drops it once the policy has
    /// either under another uid (deleted and created again under its name).
    pub(crate) made_under: Incarnation,
}

impl Subscription {
    /// The same filter subscribed again: under the channel the policy has now, with the
    /// options of the new SUBSCRIBE.
    pub(crate) fn renew(
        &mut self,
        made_under: Incarnation,
        qos: u8,
        id: Option<usize>,
        no_local: bool,
        retain_as_published: bool,
    ) {
        self.made_under = made_under;
        self.qos = qos;
        self.id = id;
        self.no_local = no_local;
        self.retain_as_published = retain_as_published;
    }
}

/// Which Tenant and Channel of their names a subscription was made under: their uids, as
/// 64-bit hashes (0: unknown). Every subscription keeps one, so 16 bytes rather than two
/// strings; a hash tells a channel deleted and created again apart, which is all it is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Incarnation {
    tenant: u64,
    channel: u64,
}

impl Incarnation {
    /// The uids `snapshot` has for `channel` and its tenant.
    pub(crate) fn of(snapshot: &Snapshot, tenant: &str, channel: &Channel) -> Self {
        Self {
            tenant: uid_hash(snapshot.tenant(tenant).map_or("", |t| t.uid.as_str())),
            channel: uid_hash(&channel.uid),
        }
    }

    /// Its tenant's and channel's uid hashes (the session file keeps them across a restart).
    pub(crate) fn hashes(self) -> (u64, u64) {
        (self.tenant, self.channel)
    }

    /// The inverse of [`Incarnation::hashes`].
    pub(crate) fn from_hashes(tenant: u64, channel: u64) -> Self {
        Self { tenant, channel }
    }

    /// Whether what was made under `self` was made under another tenant or channel of the same
    /// name than `now`: a uid known on both sides differs. An unknown one matches all.
    pub(crate) fn other_than(self, now: Self) -> bool {
        let differ = |a: u64, b: u64| a != 0 && b != 0 && a != b;
        differ(self.tenant, now.tenant) || differ(self.channel, now.channel)
    }
}

/// A uid's hash, never 0 (which stands for an empty, unknown uid). A fixed seed: the same uid
/// hashes the same at SUBSCRIBE and at every later snapshot.
fn uid_hash(uid: &str) -> u64 {
    if uid.is_empty() {
        return 0;
    }
    foldhash::fast::FixedState::with_seed(0x6669_6565_6c64)
        .hash_one(uid)
        .max(1)
}

/// Up to this many subscriptions a delivery matches each one instead of using the index.
const SMALL: usize = 8;

/// A session's subscriptions, by full filter, with an index for delivery. Boxed, and made at
/// the first SUBSCRIBE: most sessions never subscribe, and the session is the connection's
/// future (MQTT.md, Memory).
#[derive(Default)]
pub(crate) struct Subs(Option<Box<Index>>);

#[derive(Default)]
struct Index {
    /// The subscriptions, densely: a delivery to a session with a few of them walks this.
    subs: Vec<Subscription>,
    /// Each subscription's place in `subs`, by full filter.
    by_full: HashMap<String, usize>,
    /// Filters without wildcards, by the topic they name: their full filters.
    exact: HashMap<String, Vec<String>>,
    /// Filters with wildcards, by channel (`m/<tenant>/c/<channel>`): their full filters.
    wild: HashMap<String, Vec<String>>,
    /// The full filters a subtopic deny of the subject overlaps: while there is one, every
    /// delivery's topic is checked ([`Subs::withholding`]). A new subscription is in it until
    /// its SUBSCRIBE says otherwise, so nothing is delivered unchecked by mistake.
    withholding: HashSet<String>,
    /// The memo of those checks.
    gate: DeliveryGate,
}

impl Index {
    fn bucket(&mut self, matcher: &str) -> Entry<'_, String, Vec<String>> {
        if matcher.contains(['+', '#']) {
            self.wild.entry(channel_key(matcher).to_owned())
        } else {
            self.exact.entry(matcher.to_owned())
        }
    }

    fn get(&self, full: &str) -> Option<&Subscription> {
        self.by_full.get(full).map(|&i| &self.subs[i])
    }
}

impl Subs {
    /// How many subscriptions the session holds.
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |i| i.subs.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|i| i.subs.is_empty())
    }

    pub(crate) fn get_mut(&mut self, full: &str) -> Option<&mut Subscription> {
        let index = self.0.as_mut()?;
        let i = *index.by_full.get(full)?;
        Some(&mut index.subs[i])
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.0.iter().flat_map(|i| i.subs.iter())
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Subscription> {
        self.0.iter_mut().flat_map(|i| i.subs.iter_mut())
    }

    /// Adds a subscription; one with the same full filter is replaced.
    pub(crate) fn insert(&mut self, sub: Subscription) {
        let index = self.0.get_or_insert_with(Box::default);
        if let Some(&i) = index.by_full.get(&sub.full) {
            index.subs[i] = sub;
            return;
        }
        let full = sub.full.clone();
        let matcher = sub.matcher.clone();
        index.withholding.insert(full.clone());
        index.by_full.insert(full.clone(), index.subs.len());
        index.subs.push(sub);
        index.bucket(&matcher).or_default().push(full);
    }

    pub(crate) fn remove(&mut self, full: &str) -> Option<Subscription> {
        let index = self.0.as_mut()?;
        let i = index.by_full.remove(full)?;
        index.withholding.remove(full);
        let sub = index.subs.swap_remove(i);
        if let Some(moved) = index.subs.get(i)
            && let Some(place) = index.by_full.get_mut(&moved.full)
        {
            *place = i;
        }
        if let Entry::Occupied(mut e) = index.bucket(&sub.matcher) {
            e.get_mut().retain(|f| f != full);
            if e.get().is_empty() {
                e.remove();
            }
        }
        if index.subs.is_empty() {
            self.0 = None;
        }
        Some(sub)
    }

    /// Marks whether a subtopic deny overlaps the subscription `full` ([`Index::withholding`]).
    pub(crate) fn set_withholds(&mut self, full: &str, withholds: bool) {
        let Some(index) = self.0.as_mut() else {
            return;
        };
        if !withholds {
            index.withholding.remove(full);
        } else if index.by_full.contains_key(full) && !index.withholding.contains(full) {
            index.withholding.insert(full.to_owned());
        }
    }

    /// Replaces the set of subscriptions a subtopic deny overlaps (after a re-check of all).
    pub(crate) fn reset_withholding(&mut self, fulls: Vec<String>) {
        if let Some(index) = self.0.as_mut() {
            index.withholding = fulls.into_iter().collect();
        }
    }

    /// The memo of delivery checks, when a subscription needs them: `None` (nothing to check,
    /// and nothing paid per message) when no subtopic deny overlaps any subscription.
    pub(crate) fn withholding(&mut self) -> Option<&mut DeliveryGate> {
        self.0
            .as_deref_mut()
            .filter(|i| !i.withholding.is_empty())
            .map(|i| &mut i.gate)
    }

    /// Removes the subscriptions `gone` says; returns their router filters.
    pub(crate) fn remove_where(&mut self, gone: impl Fn(&Subscription) -> bool) -> Vec<String> {
        let fulls: Vec<String> = self
            .0
            .iter()
            .flat_map(|i| i.subs.iter())
            .filter(|s| gone(s))
            .map(|s| s.full.clone())
            .collect();
        fulls
            .iter()
            .filter_map(|f| self.remove(f))
            .map(|s| s.router)
            .collect()
    }

    /// The subscriptions whose filter matches a full topic. A session with a few
    /// subscriptions (most devices) has them matched one by one, which costs less than the
    /// index's lookups; past [`SMALL`] the index finds the candidates.
    pub(crate) fn matching<'a>(&'a self, topic: &'a str) -> Matching<'a> {
        let walk = match self.0.as_deref() {
            None => Walk::Done,
            Some(index) if index.subs.len() <= SMALL => Walk::Few(index.subs.iter()),
            Some(index) => Walk::Indexed {
                index,
                exact: index.exact.get(topic).map_or(&[][..], Vec::as_slice).iter(),
                wild: index
                    .wild
                    .get(channel_key(topic))
                    .map_or(&[][..], Vec::as_slice)
                    .iter(),
            },
        };
        Matching { topic, walk }
    }
}

/// The subscriptions that match a topic ([`Subs::matching`]): a plain loop, since it runs for
/// every delivery.
pub(crate) struct Matching<'a> {
    topic: &'a str,
    walk: Walk<'a>,
}

enum Walk<'a> {
    Few(std::slice::Iter<'a, Subscription>),
    Indexed {
        index: &'a Index,
        exact: std::slice::Iter<'a, String>,
        wild: std::slice::Iter<'a, String>,
    },
    Done,
}

impl<'a> Iterator for Matching<'a> {
    type Item = &'a Subscription;

    fn next(&mut self) -> Option<&'a Subscription> {
        loop {
            let sub = match &mut self.walk {
                Walk::Few(subs) => subs.next()?,
                Walk::Indexed { index, exact, wild } => {
                    let full = exact.next().or_else(|| wild.next())?;
                    match index.get(full) {
                        Some(sub) => sub,
                        None => continue,
                    }
                }
                Walk::Done => return None,
            };
            if filter_matches(&sub.matcher, self.topic) {
                return Some(sub);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(full: &str) -> Subscription {
        let matcher = full
            .strip_prefix("$share/")
            .and_then(|r| r.split_once('/'))
            .map_or(full, |(_, f)| f);
        Subscription {
            client: matcher.to_owned(),
            full: full.to_owned(),
            matcher: matcher.to_owned(),
            router: full.to_owned(),
            no_local: false,
            retain_as_published: false,
            qos: 0,
            id: None,
            metadata: false,
            made_under: Incarnation::default(),
        }
    }

    #[test]
    fn a_few_subscriptions_and_many_match_the_same_topics() {
        let filters = [
            "m/t/c/a/x",
            "m/t/c/a/+",
            "m/t/c/a/#",
            "$share/g/m/t/c/a/x",
            "m/t/c/b/y/z",
            "m/t/c/b/+/z",
            "m/u/c/a/x",
        ];
        let topics = [
            "m/t/c/a/x",
            "m/t/c/a/y",
            "m/t/c/b/y/z",
            "m/t/c/b/q",
            "m/u/c/a/x",
        ];
        // A few (matched one by one), then past SMALL (through the index) with the same ones
        // among many that match nothing asked.
        for padding in [0, 2 * SMALL] {
            let mut subs = Subs::default();
            for f in filters {
                subs.insert(sub(f));
            }
            for i in 0..padding {
                subs.insert(sub(&format!("m/t/c/other/{i}")));
            }
            for topic in topics {
                let mut got: Vec<&str> = subs.matching(topic).map(|s| s.full.as_str()).collect();
                got.sort_unstable();
                let mut want: Vec<&str> = filters
                    .iter()
                    .copied()
                    .filter(|f| filter_matches(&sub(f).matcher, topic))
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "{topic} with {padding} more");
            }
            // Removing one moves another into its place: each is still found, once.
            assert!(subs.remove("m/t/c/a/x").is_some());
            assert!(subs.remove("m/t/c/a/x").is_none());
            for f in filters.iter().filter(|f| **f != "m/t/c/a/x") {
                assert!(subs.get_mut(f).is_some_and(|s| s.full == *f), "{f}");
            }
            let mut got: Vec<&str> = subs
                .matching("m/t/c/a/x")
                .map(|s| s.full.as_str())
                .collect();
            got.sort_unstable();
            assert_eq!(got, ["$share/g/m/t/c/a/x", "m/t/c/a/#", "m/t/c/a/+"]);
            assert_eq!(subs.len(), filters.len() - 1 + padding);
        }
    }
}
