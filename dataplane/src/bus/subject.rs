//! MQTT topics and filters as NATS subjects: `m/<tenant>/c/<channel>/…` ↔ `m.<tenant>.c.<channel>.…`.
//!
//! Each MQTT level becomes one NATS token. A token may not be empty nor hold `.`, whitespace, `*`
//! or `>`, and JetStream KV keys (the retained bucket is keyed by subject) allow only
//! `[-_=.a-zA-Z0-9]`; so every byte outside `[-_a-zA-Z0-9]` is written `=XX` (upper-case hex of
//! the UTF-8 byte), and an empty level is the token `=`. The mapping is reversible and keeps
//! distinct levels distinct.

use std::collections::BTreeSet;

use fleetward_policy::{TopicLimits, parse_filter};

/// The channel a subject belongs to: (tenant, channel), both unescaped.
pub type ChannelKey = (String, String);

/// One MQTT level as one NATS token, and back: the escaping every NATS subject of Fleetward
/// uses (the bus's here, the history stream's in `fleetward-history`).
pub use fleetward_process::nats::{escape_token as escape_level, unescape_token as unescape_level};

/// Splits a full topic name or filter, `m/<tenant>/c/<channel>[/…]`, into tenant, channel and
/// the levels after the channel, by the policy's grammar; `None` if it is not one of ours.
pub(crate) fn split(topic: &str) -> Option<(&str, &str, Option<&str>)> {
    // Checked at ingress against the configured limit; here only its shape matters.
    let limits = TopicLimits {
        max_len: usize::from(u16::MAX),
    };
    let t = parse_filter(topic, &limits).ok()?;
    if t.share_group().is_some() {
        return None;
    }
    Some((t.tenant(), t.channel(), t.subtopic()))
}

/// The tenant and channel of a full topic or filter, if it is one of ours.
pub fn channel_of(topic: &str) -> Option<ChannelKey> {
    let topic = strip_share(topic);
    split(topic).map(|(t, c, _)| (t.to_owned(), c.to_owned()))
}

/// The subject of a topic name (no wildcards): `m/acme/c/x/a b` → `m.acme.c.x.a=20b`.
pub fn topic_subject(topic: &str) -> Option<String> {
    let (tenant, channel, sub) = split(topic)?;
    let mut out = format!("m.{}.c.{}", escape_level(tenant), escape_level(channel));
    if let Some(sub) = sub {
        for level in sub.split('/') {
            out.push('.');
            out.push_str(&escape_level(level));
        }
    }
    Some(out)
}

/// The topic a subject stands for (the reverse of [`topic_subject`]).
pub fn subject_topic(subject: &str) -> Option<String> {
    let mut tokens = subject.split('.');
    if tokens.next()? != "m" {
        return None;
    }
    let tenant = unescape_level(tokens.next()?)?;
    if tokens.next()? != "c" {
        return None;
    }
    let channel = unescape_level(tokens.next()?)?;
    let mut out = format!("m/{tenant}/c/{channel}");
    for token in tokens {
        out.push('/');
        out.push_str(&unescape_level(token)?);
    }
    Some(out)
}

fn strip_share(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// The subjects that carry what an MQTT filter matches. `+` becomes `*`; a trailing `#` becomes
/// `>` plus the parent subject itself, because MQTT's `a/#` also matches `a`. A shared
/// subscription's `$share/<group>/` is dropped (groups are per pod). `None` for anything that
/// is not `m/<tenant>/c/<channel>[/…]` with wildcards only after the channel.
pub fn filter_subjects(filter: &str) -> Option<Vec<String>> {
    let (tenant, channel, sub) = split(strip_share(filter))?;
    if [tenant, channel].iter().any(|l| l.contains(['+', '#'])) {
        return None;
    }
    let mut base = format!("m.{}.c.{}", escape_level(tenant), escape_level(channel));
    let Some(sub) = sub else {
        return Some(vec![base]);
    };
    let levels: Vec<&str> = sub.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" if i + 1 == levels.len() => {
                let parent = base.clone();
                base.push_str(".>");
                return Some(vec![parent, base]);
            }
            "+" => base.push_str(".*"),
            l if l.contains(['+', '#']) => return None,
            l => {
                base.push('.');
                base.push_str(&escape_level(l));
            }
        }
    }
    Some(vec![base])
}

/// The two subjects that carry a whole channel.
pub fn channel_subjects(tenant: &str, channel: &str) -> BTreeSet<String> {
    let base = format!("m.{}.c.{}", escape_level(tenant), escape_level(channel));
    BTreeSet::from([format!("{base}.>"), base])
}

/// Whether some subject matches both subject patterns.
pub fn overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            // `>` needs at least one more token, which the other has here.
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// The subjects a pod subscribes to for one channel, given the subjects its local filters on
/// that channel need: those subjects when no two overlap (so no message arrives twice), else
/// the whole channel.
pub fn cover(tenant: &str, channel: &str, wanted: &BTreeSet<String>) -> BTreeSet<String> {
    let list: Vec<&String> = wanted.iter().collect();
    for (i, a) in list.iter().enumerate() {
        if list[i + 1..].iter().any(|b| overlap(a, b)) {
            return channel_subjects(tenant, channel);
        }
    }
    wanted.clone()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn topics_map_level_by_level_with_escapes() {
        assert_eq!(topic_subject("m/acme/c/x").as_deref(), Some("m.acme.c.x"));
        assert_eq!(
            topic_subject("m/acme/c/x/a.b/c d/*/>/=").as_deref(),
            Some("m.acme.c.x.a=2Eb.c=20d.=2A.=3E.=3D")
        );
        // Empty levels, leading, inner and trailing, stay levels.
        assert_eq!(
            topic_subject("m/acme/c/x//a/").as_deref(),
            Some("m.acme.c.x.=.a.=")
        );
        assert_eq!(
            topic_subject("m/acme/c/x/é").as_deref(),
            Some("m.acme.c.x.=C3=A9")
        );
        assert_eq!(topic_subject("n/acme/c/x"), None);
        assert_eq!(topic_subject("m/acme/d/x"), None);
        assert_eq!(topic_subject("m//c/x"), None);
        assert_eq!(topic_subject("m/acme/c/"), None);
    }

    #[test]
    fn filters_map_wildcards_and_hash_takes_the_parent_too() {
        let f = |s: &str| filter_subjects(s);
        assert_eq!(f("m/acme/c/x"), Some(vec!["m.acme.c.x".to_owned()]));
        assert_eq!(
            f("m/acme/c/x/#"),
            Some(vec!["m.acme.c.x".to_owned(), "m.acme.c.x.>".to_owned()])
        );
        assert_eq!(
            f("m/acme/c/x/+/t/#"),
            Some(vec![
                "m.acme.c.x.*.t".to_owned(),
                "m.acme.c.x.*.t.>".to_owned()
            ])
        );
        assert_eq!(
            f("$share/g/m/acme/c/x/+"),
            Some(vec!["m.acme.c.x.*".to_owned()])
        );
        // A literal `*` level is not a wildcard.
        assert_eq!(f("m/acme/c/x/*"), Some(vec!["m.acme.c.x.=2A".to_owned()]));
        assert_eq!(f("m/+/c/x/a"), None);
        assert_eq!(f("m/acme/c/#"), None);
        assert_eq!(f("m/acme/c/x/#/a"), None);
        assert_eq!(f("m/acme/c/x/a+"), None);
    }

    #[test]
    fn overlap_follows_nats_matching() {
        assert!(overlap("m.a.c.x", "m.a.c.x"));
        assert!(!overlap("m.a.c.x", "m.a.c.x.>"));
        assert!(overlap("m.a.c.x.y", "m.a.c.x.>"));
        assert!(overlap("m.a.c.x.*.b", "m.a.c.x.a.*"));
        assert!(!overlap("m.a.c.x.*", "m.a.c.x.a.b"));
        assert!(!overlap("m.a.c.x.a", "m.a.c.x.b"));
        assert!(!overlap("m.a.c.x.a", "m.b.c.x.a"));
    }

    #[test]
    fn the_cover_is_the_filters_unless_they_overlap() {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let disjoint = set(&["m.a.c.x", "m.a.c.x.>"]);
        assert_eq!(cover("a", "x", &disjoint), disjoint);
        let two = set(&["m.a.c.x.s1", "m.a.c.x.s2.*"]);
        assert_eq!(cover("a", "x", &two), two);
        let overlapping = set(&["m.a.c.x.s1", "m.a.c.x.*"]);
        assert_eq!(cover("a", "x", &overlapping), channel_subjects("a", "x"));
    }

    /// An MQTT topic level: anything but `/`, `+`, `#` and NUL, often with NATS specials.
    fn level() -> impl Strategy<Value = String> {
        prop::string::string_regex("[a-zA-Z0-9 ._*>=é$-]{0,6}").expect("a valid regex")
    }

    proptest! {
        #[test]
        fn escaped_levels_are_valid_tokens_and_reversible(l in level()) {
            let t = escape_level(&l);
            prop_assert!(!t.is_empty());
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)));
            prop_assert!(t != "*" && t != ">");
            prop_assert_eq!(unescape_level(&t), Some(l));
        }

        #[test]
        fn topics_round_trip_and_distinct_topics_get_distinct_subjects(
            a in prop::collection::vec(level(), 0..4),
            b in prop::collection::vec(level(), 0..4),
        ) {
            let topic = |levels: &[String]| {
                let mut t = "m/acme/c/x".to_owned();
                for l in levels {
                    t.push('/');
                    t.push_str(l);
                }
                t
            };
            let (ta, tb) = (topic(&a), topic(&b));
            let (sa, sb) = (topic_subject(&ta).expect("ours"), topic_subject(&tb).expect("ours"));
            prop_assert_eq!(subject_topic(&sa), Some(ta.clone()));
            prop_assert_eq!(ta == tb, sa == sb);
        }

        #[test]
        fn a_filter_subject_matches_exactly_the_topics_the_filter_matches(
            filter in prop::collection::vec(prop_oneof![Just("+".to_owned()), Just("a".to_owned()), Just("b c".to_owned())], 0..3),
            hash in any::<bool>(),
            topic in prop::collection::vec(prop_oneof![Just("a".to_owned()), Just("b c".to_owned()), Just(String::new())], 0..4),
        ) {
            let mut f = "m/t/c/x".to_owned();
            for l in &filter {
                f.push('/');
                f.push_str(l);
            }
            if hash {
                f.push_str("/#");
            }
            let mut t = "m/t/c/x".to_owned();
            for l in &topic {
                t.push('/');
                t.push_str(l);
            }
            let subjects = filter_subjects(&f).expect("a valid filter");
            let subject = topic_subject(&t).expect("a valid topic");
            let nats = subjects.iter().any(|s| overlap(s, &subject));
            prop_assert_eq!(nats, fleetward_policy::filter_matches(&f, &t), "{} {}", f, t);
        }
    }
}
