use super::*;

fn name(s: &str) -> Result<Topic<'_>, TopicError> {
    parse_topic_name(s, &TopicLimits::default())
}

fn filter(s: &str) -> Result<Topic<'_>, TopicError> {
    parse_filter(s, &TopicLimits::default())
}

#[test]
fn parses_names() {
    let t = name("m/acme/c/telemetry/room/1").expect("valid");
    assert_eq!(t.tenant(), "acme");
    assert_eq!(t.channel(), "telemetry");
    assert_eq!(t.subtopic(), Some("room/1"));
    assert_eq!(t.kind(), TopicKind::Name);
    assert!(!t.has_wildcards());
    let root = name("m/acme/c/telemetry").expect("valid");
    assert_eq!(root.subtopic(), None);
    let trailing = name("m/acme/c/telemetry/").expect("valid");
    assert_eq!(trailing.subtopic(), Some(""));
    // `$` inside the subtopic is an ordinary level.
    assert_eq!(name("m/a/c/b/$x").expect("valid").subtopic(), Some("$x"));
}

#[test]
fn parses_filters_and_shares() {
    let f = filter("m/acme/c/telemetry/+/temp/#").expect("valid");
    assert!(f.has_wildcards());
    assert_eq!(f.share_group(), None);
    let s = filter("$share/workers/m/acme/c/jobs/#").expect("valid");
    assert_eq!(s.share_group(), Some("workers"));
    assert_eq!(s.tenant(), "acme");
    assert_eq!(s.channel(), "jobs");
    assert_eq!(s.subtopic(), Some("#"));
    assert_eq!(s.as_str(), "m/acme/c/jobs/#");
    assert_eq!(s.to_string(), "$share/workers/m/acme/c/jobs/#");
    assert!(!filter("m/acme/c/jobs").expect("valid").has_wildcards());
}

#[test]
fn refuses_empty() {
    assert_eq!(name(""), Err(TopicError::Empty));
    assert_eq!(filter(""), Err(TopicError::Empty));
}

#[test]
fn refuses_too_long() {
    let limits = TopicLimits { max_len: 16 };
    assert_eq!(
        parse_topic_name("m/acme/c/telemetry", &limits),
        Err(TopicError::TooLong { len: 18, max: 16 })
    );
    assert!(parse_topic_name("m/acme/c/tele", &limits).is_ok());
    assert_eq!(
        parse_filter("m/acme/c/telemetry/#", &limits),
        Err(TopicError::TooLong { len: 20, max: 16 })
    );
}

#[test]
fn refuses_invalid_utf8() {
    let bytes: &[u8] = b"m/acme/c/t/\xff\xfe";
    assert_eq!(
        parse_topic_name(bytes, &TopicLimits::default()),
        Err(TopicError::InvalidUtf8)
    );
    assert_eq!(
        parse_filter(bytes, &TopicLimits::default()),
        Err(TopicError::InvalidUtf8)
    );
}

#[test]
fn refuses_nul() {
    assert_eq!(name("m/acme/c/t/a\0b"), Err(TopicError::ContainsNul));
    assert_eq!(filter("m/acme/c/t/\0"), Err(TopicError::ContainsNul));
}

#[test]
fn refuses_sys_and_dollar_topics() {
    assert_eq!(name("$SYS/broker/uptime"), Err(TopicError::SysTopic));
    assert_eq!(filter("$SYS/#"), Err(TopicError::SysTopic));
    assert_eq!(filter("$SYS"), Err(TopicError::SysTopic));
    assert_eq!(name("$internal/x"), Err(TopicError::DollarTopic));
    assert_eq!(filter("$foo/#"), Err(TopicError::DollarTopic));
    // The filter inside a share gets the same check.
    assert_eq!(filter("$share/g/$SYS/#"), Err(TopicError::SysTopic));
    assert_eq!(filter("$share/g/$x/y"), Err(TopicError::DollarTopic));
}

#[test]
fn refuses_share_as_topic_name() {
    assert_eq!(name("$share/g/m/a/c/b"), Err(TopicError::ShareInTopicName));
    assert_eq!(name("$share"), Err(TopicError::ShareInTopicName));
}

#[test]
fn refuses_bad_share_group() {
    assert_eq!(
        filter("$share//m/a/c/b"),
        Err(TopicError::InvalidShareGroup)
    );
    assert_eq!(
        filter("$share/+/m/a/c/b"),
        Err(TopicError::InvalidShareGroup)
    );
    assert_eq!(
        filter("$share/g#/m/a/c/b"),
        Err(TopicError::InvalidShareGroup)
    );
    assert_eq!(filter("$share"), Err(TopicError::InvalidShareGroup));
}

#[test]
fn refuses_share_without_filter() {
    assert_eq!(filter("$share/g"), Err(TopicError::ShareMissingFilter));
    assert_eq!(filter("$share/g/"), Err(TopicError::ShareMissingFilter));
}

#[test]
fn refuses_foreign_layout() {
    assert_eq!(name("sensors/1"), Err(TopicError::NotFleetwardTopic));
    assert_eq!(name("m"), Err(TopicError::NotFleetwardTopic));
    assert_eq!(
        name("m/acme/x/telemetry"),
        Err(TopicError::NotFleetwardTopic)
    );
    assert_eq!(filter("/m/acme/c/t"), Err(TopicError::NotFleetwardTopic));
}

#[test]
fn refuses_missing_channel() {
    assert_eq!(name("m/acme"), Err(TopicError::MissingChannel));
    assert_eq!(name("m/acme/c"), Err(TopicError::MissingChannel));
}

#[test]
fn refuses_empty_tenant_or_channel() {
    assert_eq!(name("m//c/t"), Err(TopicError::EmptyTenant));
    assert_eq!(name("m/acme/c/"), Err(TopicError::EmptyChannel));
    assert_eq!(name("m/acme/c//x"), Err(TopicError::EmptyChannel));
}

#[test]
fn refuses_wildcards_outside_subtopic() {
    assert_eq!(filter("#"), Err(TopicError::WildcardInPrefix));
    assert_eq!(filter("+/acme/c/t"), Err(TopicError::WildcardInPrefix));
    assert_eq!(filter("m/acme/#"), Err(TopicError::WildcardInPrefix));
    assert_eq!(filter("m/acme/+/t"), Err(TopicError::WildcardInPrefix));
    assert_eq!(filter("m/+/c/t"), Err(TopicError::WildcardInTenant));
    assert_eq!(filter("m/#"), Err(TopicError::WildcardInTenant));
    assert_eq!(filter("m/ac+me/c/t"), Err(TopicError::WildcardInTenant));
    assert_eq!(filter("m/acme/c/+"), Err(TopicError::WildcardInChannel));
    assert_eq!(filter("m/acme/c/#"), Err(TopicError::WildcardInChannel));
    assert_eq!(filter("m/acme/c/t#/x"), Err(TopicError::WildcardInChannel));
}

#[test]
fn refuses_wildcards_in_topic_names() {
    assert_eq!(name("m/acme/c/t/+"), Err(TopicError::WildcardInTopicName));
    assert_eq!(name("m/acme/c/t/a/#"), Err(TopicError::WildcardInTopicName));
    assert_eq!(name("m/acme/c/t/a+b"), Err(TopicError::WildcardInTopicName));
}

#[test]
fn refuses_hash_not_last() {
    assert_eq!(filter("m/acme/c/t/#/x"), Err(TopicError::HashNotLast));
    assert_eq!(filter("m/acme/c/t/#/#"), Err(TopicError::HashNotLast));
}

#[test]
fn refuses_partial_wildcards() {
    assert_eq!(filter("m/acme/c/t/a+"), Err(TopicError::PartialWildcard));
    assert_eq!(filter("m/acme/c/t/+a/b"), Err(TopicError::PartialWildcard));
    assert_eq!(filter("m/acme/c/t/x/a#"), Err(TopicError::PartialWildcard));
}

#[test]
fn labels_are_distinct() {
    let all = [
        TopicError::Empty,
        TopicError::TooLong { len: 0, max: 0 },
        TopicError::InvalidUtf8,
        TopicError::ContainsNul,
        TopicError::SysTopic,
        TopicError::DollarTopic,
        TopicError::ShareInTopicName,
        TopicError::InvalidShareGroup,
        TopicError::ShareMissingFilter,
        TopicError::NotFleetwardTopic,
        TopicError::MissingChannel,
        TopicError::EmptyTenant,
        TopicError::EmptyChannel,
        TopicError::WildcardInPrefix,
        TopicError::WildcardInTenant,
        TopicError::WildcardInChannel,
        TopicError::WildcardInTopicName,
        TopicError::HashNotLast,
        TopicError::PartialWildcard,
    ];
    let labels: std::collections::HashSet<_> = all.iter().map(|e| e.as_str()).collect();
    assert_eq!(labels.len(), all.len());
}

#[test]
fn mqtt_filter_matching() {
    assert!(filter_matches("#", "a/b"));
    assert!(filter_matches("a/#", "a"));
    assert!(filter_matches("a/+/c", "a/b/c"));
    assert!(!filter_matches("a/+", "a/b/c"));
    assert!(!filter_matches("#", "$SYS/x"));
    assert!(!filter_matches("+/x", "$SYS/x"));
    assert!(filter_matches("$SYS/#", "$SYS/x"));
    // A filter without wildcards matches its own topic only.
    assert!(filter_matches("a/b", "a/b"));
    assert!(filter_matches("$SYS/x", "$SYS/x"));
    assert!(!filter_matches("a/b", "a/b/c"));
    assert!(!filter_matches("a/b/c", "a/b"));
    assert!(!filter_matches("a/b", "a/bc"));
    assert!(!filter_matches("a//b", "a/b"));
}

#[test]
fn mountpoint_maps_both_ways() {
    let mp = Mountpoint::new("acme", "legacy");
    let limits = TopicLimits::default();
    assert_eq!(
        mp.mount_topic_name(b"dev/1/temp", &limits),
        Ok("m/acme/c/legacy/dev/1/temp".to_owned())
    );
    assert_eq!(
        mp.mount_filter(b"dev/+/temp", &limits),
        Ok("m/acme/c/legacy/dev/+/temp".to_owned())
    );
    assert_eq!(
        mp.mount_filter(b"$share/g/cmd/#", &limits),
        Ok("$share/g/m/acme/c/legacy/cmd/#".to_owned())
    );
    assert_eq!(mp.unmount("m/acme/c/legacy/dev/1"), Some("dev/1"));
    assert_eq!(mp.unmount("m/acme/c/legacy"), None);
    assert_eq!(mp.unmount("m/acme/c/other/dev/1"), None);
    assert_eq!(mp.unmount("m/other/c/legacy/dev/1"), None);
    // Every check runs on the full topic.
    let full = mp.mount_filter(b"#", &limits).expect("valid");
    let parsed = parse_filter(&full, &limits).expect("valid");
    assert_eq!((parsed.tenant(), parsed.channel()), ("acme", "legacy"));
}

#[test]
fn mountpoint_keeps_dollar_topics_dollar() {
    let mp = Mountpoint::new("acme", "legacy");
    let limits = TopicLimits::default();
    let full = mp
        .mount_topic_name(b"$SYS/x", &limits)
        .expect("mounted, not broker $SYS");
    assert_eq!(full, "m/acme/c/legacy/$SYS/x");
    let seen = mp.unmount(&full).expect("under the mountpoint");
    assert!(!filter_matches("#", seen));
    assert!(!filter_matches("+/x", seen));
    assert!(filter_matches("$SYS/#", seen));
}

#[test]
fn mountpoint_refusals() {
    let mp = Mountpoint::new("acme", "legacy");
    let limits = TopicLimits { max_len: 30 };
    assert_eq!(mp.mount_topic_name(b"", &limits), Err(TopicError::Empty));
    assert_eq!(
        mp.mount_topic_name(b"a/+", &limits),
        Err(TopicError::WildcardInTopicName)
    );
    assert_eq!(
        mp.mount_filter(b"a/#/b", &limits),
        Err(TopicError::HashNotLast)
    );
    assert_eq!(
        mp.mount_filter(b"a+", &limits),
        Err(TopicError::PartialWildcard)
    );
    assert_eq!(
        mp.mount_filter(b"\xff", &limits),
        Err(TopicError::InvalidUtf8)
    );
    assert_eq!(
        mp.mount_filter(b"a\0", &limits),
        Err(TopicError::ContainsNul)
    );
    assert_eq!(
        mp.mount_topic_name(b"$share/g/x", &limits),
        Err(TopicError::ShareInTopicName)
    );
    assert_eq!(
        mp.mount_filter(b"$share/g", &limits),
        Err(TopicError::ShareMissingFilter)
    );
    // The prefix counts toward the limit: 16 bytes of prefix + 15 > 30.
    assert_eq!(
        mp.mount_topic_name(b"aaaaaaaaaaaaaaa", &limits),
        Err(TopicError::TooLong { len: 15, max: 14 })
    );
}
