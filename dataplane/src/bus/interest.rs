//! Which subjects this pod needs, reference-counted over the local subscriptions' filters.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::subject::{ChannelKey, channel_of, cover, filter_subjects};

/// Local subscriptions per channel, as the subjects their filters need, counted.
#[derive(Default, Debug)]
pub struct Interest {
    channels: HashMap<ChannelKey, Channel>,
}

#[derive(Default, Debug)]
struct Channel {
    wanted: BTreeMap<String, usize>,
    subscribed: BTreeSet<String>,
}

impl Interest {
    /// Counts a subscription on `filter`; returns the channel's new subject set if it changed.
    pub fn add(&mut self, filter: &str) -> Option<(ChannelKey, BTreeSet<String>)> {
        let (key, subjects) = channel_of(filter).zip(filter_subjects(filter))?;
        let channel = self.channels.entry(key.clone()).or_default();
        for s in subjects {
            *channel.wanted.entry(s).or_default() += 1;
        }
        Self::recompute(key, channel)
    }

    /// Uncounts a subscription on `filter`; returns the channel's new subject set if it
    /// changed (empty once the last subscription on the channel is gone).
    pub fn remove(&mut self, filter: &str) -> Option<(ChannelKey, BTreeSet<String>)> {
        let (key, subjects) = channel_of(filter).zip(filter_subjects(filter))?;
        let channel = self.channels.get_mut(&key)?;
        for s in subjects {
            if let Some(n) = channel.wanted.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    channel.wanted.remove(&s);
                }
            }
        }
        let change = Self::recompute(key.clone(), channel);
        if channel.wanted.is_empty() {
            self.channels.remove(&key);
        }
        change
    }

    fn recompute(key: ChannelKey, channel: &mut Channel) -> Option<(ChannelKey, BTreeSet<String>)> {
        let wanted: BTreeSet<String> = channel.wanted.keys().cloned().collect();
        let next = if wanted.is_empty() {
            wanted
        } else {
            cover(&key.0, &key.1, &wanted)
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
