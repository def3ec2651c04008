//! Fuzzes the topic and filter parser and the mountpoint mapping: no panics, and every
//! accepted topic obeys the grammar.
#![no_main]

use fleetward_policy::{Mountpoint, Topic, TopicKind, TopicLimits, parse_filter, parse_topic_name};
use libfuzzer_sys::fuzz_target;

fn check(t: &Topic<'_>, limits: &TopicLimits) {
    assert!(!t.tenant().is_empty() && !t.tenant().contains(['+', '#', '/']));
    assert!(!t.channel().is_empty() && !t.channel().contains(['+', '#', '/']));
    assert!(!t.as_str().starts_with('$'));
    assert!(!t.as_str().contains('\0'));
    let mut rebuilt = format!("m/{}/c/{}", t.tenant(), t.channel());
    if let Some(sub) = t.subtopic() {
        rebuilt.push('/');
        rebuilt.push_str(sub);
        let levels: Vec<&str> = sub.split('/').collect();
        for (i, l) in levels.iter().enumerate() {
            if t.kind() == TopicKind::Name {
                assert!(!l.contains(['+', '#']));
            } else if l.contains(['+', '#']) {
                assert!(*l == "+" || (*l == "#" && i == levels.len() - 1));
            }
        }
    }
    assert_eq!(rebuilt, t.as_str());
    // What is printed parses back to the same thing.
    let printed = t.to_string();
    let again = match t.kind() {
        TopicKind::Name => parse_topic_name(&printed, limits),
        TopicKind::Filter => parse_filter(&printed, limits),
    };
    assert_eq!(again.as_ref(), Ok(t));
}

fuzz_target!(|data: &[u8]| {
    let limits = TopicLimits { max_len: 256 };
    if let Ok(t) = parse_topic_name(data, &limits) {
        assert!(!t.has_wildcards());
        assert!(t.share_group().is_none());
        check(&t, &limits);
    }
    if let Ok(f) = parse_filter(data, &limits) {
        check(&f, &limits);
    }
    let mp = Mountpoint::new("acme", "legacy");
    if let Ok(full) = mp.mount_topic_name(data, &limits) {
        let t = parse_topic_name(&full, &limits).expect("mounted topics parse");
        assert_eq!((t.tenant(), t.channel()), ("acme", "legacy"));
        assert_eq!(mp.unmount(&full).map(str::as_bytes), Some(data));
    }
    if let Ok(full) = mp.mount_filter(data, &limits) {
        let f = parse_filter(&full, &limits).expect("mounted filters parse");
        assert_eq!((f.tenant(), f.channel()), ("acme", "legacy"));
    }
});
