//! Which subjects this pod needs, reference-counted over the local subscriptions' filters.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::subject::{ChannelKey, channel_of, channel_subjects, filter_subjects, overlap};

/// Distinct subjects a channel is subscribed on one by one; past this, the whole channel is
/// (as when two overlap). It bounds what a SUBSCRIBE costs here and in the bus, whatever the
/// number of distinct filters on a channel: every change hands the bus the channel's whole set,
/// and a new subject is checked for overlap against the others.
pub const MAX_SUBJECTS_PER_CHANNEL: usize = 256;

/// Local subscriptions per channel, as the subjects their filters need, counted.
#[derive(Default, Debug)]
pub struct Interest {
    channels: HashMap<ChannelKey, Channel>,
}

#[derive(Default, Debug)]
struct Channel {
    wanted: BTreeMap<String, usize>,
    subscribed: BTreeSet<String>,
    /// Whether two wanted subjects overlap, so the whole channel is subscribed instead
    /// ([`super::subject::cover`]). Kept up to date incrementally: a new subject is checked
    /// against the others (linear), and only a removal while overlapping checks them all.
    /// Recomputing the cover on every change made subscribing n distinct filters on one
    /// channel cost O(n³): 80 s of CPU for 2,000 connections.
    overlapping: bool,
}

impl Interest {
    /// Counts a subscription on `filter`; returns the channel's new subject set if it changed.
    pub fn add(&mut self, filter: &str) -> Option<(ChannelKey, BTreeSet<String>)> {
        let (key, subjects) = channel_of(filter).zip(filter_subjects(filter))?;
        let channel = self.channels.entry(key.clone()).or_default();
        let mut added = Vec::new();
        for s in subjects {
            let n = channel.wanted.entry(s.clone()).or_default();
            *n += 1;
            if *n == 1 {
                added.push(s);
            }
        }
        if !channel.overlapping {
            channel.overlapping = channel.wanted.len() > MAX_SUBJECTS_PER_CHANNEL
                || added.iter().any(|s| {
                    channel
                        .wanted
                        .keys()
                        .any(|other| other != s && overlap(s, other))
                });
        }
        Self::recompute(key, channel)
    }

    /// Uncounts a subscription on `filter`; returns the channel's new subject set if it
    /// changed (empty once the last subscription on the channel is gone).
    pub fn remove(&mut self, filter: &str) -> Option<(ChannelKey, BTreeSet<String>)> {
        let (key, subjects) = channel_of(filter).zip(filter_subjects(filter))?;
        let channel = self.channels.get_mut(&key)?;
        let mut removed = false;
        for s in subjects {
            if let Some(n) = channel.wanted.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    channel.wanted.remove(&s);
                    removed = true;
                }
            }
        }
        // Removing a subject cannot make disjoint subjects overlap; it may end an overlap.
        // Past the cap, nothing to check: the channel stays whole.
        if removed && channel.overlapping && channel.wanted.len() <= MAX_SUBJECTS_PER_CHANNEL {
            let wanted: Vec<&String> = channel.wanted.keys().collect();
            channel.overlapping = wanted
                .iter()
                .enumerate()
                .any(|(i, a)| wanted[i + 1..].iter().any(|b| overlap(a, b)));
        }
        let change = Self::recompute(key.clone(), channel);
        if channel.wanted.is_empty() {
            self.channels.remove(&key);
        }
        change
    }

    fn recompute(key: ChannelKey, channel: &mut Channel) -> Option<(ChannelKey, BTreeSet<String>)> {
        let next: BTreeSet<String> = if channel.wanted.is_empty() {
            BTreeSet::new()
        } else if channel.overlapping {
            channel_subjects(&key.0, &key.1)
        } else {
            channel.wanted.keys().cloned().collect()
        };
        if next == channel.subscribed {
            return None;
        }
        channel.subscribed = next.clone();
        Some((key, next))
    }

    /// Every subject subscribed now.
    pub fn subjects(&self) -> BTreeSet<String> {
        self.channels
            .values()
            .flat_map(|c| c.subscribed.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::bus::subject::cover;

    /// Filters on one channel, wildcards among them, so that some overlap and some do not.
    fn filter() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "m/t/c/ch",
            "m/t/c/ch/a",
            "m/t/c/ch/b",
            "m/t/c/ch/a/x",
            "m/t/c/ch/+",
            "m/t/c/ch/+/x",
            "m/t/c/ch/#",
            "m/t/c/ch/a/#",
            "m/t/c/other/a",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        /// After any sequence of subscriptions and unsubscriptions, what is subscribed is the
        /// cover of what the remaining filters need, recomputed from scratch.
        #[test]
        fn the_incremental_subjects_are_the_cover_of_what_is_wanted(
            ops in prop::collection::vec((any::<bool>(), filter()), 1..40),
        ) {
            let mut interest = Interest::default();
            let mut held: Vec<String> = Vec::new();
            for (subscribe, f) in ops {
                if subscribe {
                    interest.add(&f);
                    held.push(f);
                } else if let Some(i) = held.iter().position(|h| *h == f) {
                    interest.remove(&f);
                    held.remove(i);
                }
            }
            let mut expected = BTreeSet::new();
            let mut per_channel: BTreeMap<ChannelKey, BTreeSet<String>> = BTreeMap::new();
            for f in &held {
                let (key, subjects) = channel_of(f).zip(filter_subjects(f)).expect("valid");
                per_channel.entry(key).or_default().extend(subjects);
            }
            for (key, wanted) in &per_channel {
                expected.extend(cover(&key.0, &key.1, wanted));
            }
            prop_assert_eq!(interest.subjects(), expected);
        }
    }

    #[test]
    fn distinct_filters_take_a_subject_each_until_a_wildcard_overlaps_them() {
        let mut interest = Interest::default();
        for i in 0..MAX_SUBJECTS_PER_CHANNEL {
            interest.add(&format!("m/t/c/ch/device-{i}"));
        }
        assert_eq!(
            interest.subjects().len(),
            MAX_SUBJECTS_PER_CHANNEL,
            "disjoint: one subject each"
        );
        interest.add("m/t/c/ch/+");
        assert_eq!(
            interest.subjects(),
            channel_subjects("t", "ch"),
            "a wildcard overlapping them subscribes the whole channel"
        );
        interest.remove("m/t/c/ch/+");
        assert_eq!(
            interest.subjects().len(),
            MAX_SUBJECTS_PER_CHANNEL,
            "and its removal goes back"
        );
    }

    #[test]
    fn past_the_cap_a_channel_is_subscribed_whole_and_back_below_it() {
        let mut interest = Interest::default();
        let n = MAX_SUBJECTS_PER_CHANNEL + 1;
        for i in 0..n {
            interest.add(&format!("m/t/c/ch/device-{i}"));
        }
        assert_eq!(interest.subjects(), channel_subjects("t", "ch"));
        interest.remove("m/t/c/ch/device-0");
        assert_eq!(interest.subjects().len(), MAX_SUBJECTS_PER_CHANNEL);
    }
}
