//! Fuzzes grant patterns against topics and filters: matching, overlap and coverage agree.
#![no_main]

use fleetward_policy::SubtopicPattern;
use fleetward_policy::pattern::covers;
use libfuzzer_sys::fuzz_target;

/// A few concrete subtopics a filter matches: `+` as `a` or a name no pattern is likely to
/// use, `#` as nothing, one or two levels.
fn instances(filter: &SubtopicPattern) -> Vec<Option<String>> {
    let text = filter.as_str();
    if text.is_empty() {
        return vec![None];
    }
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for level in text.split('/') {
        let mut next = Vec::new();
        for prefix in &out {
            let choices: Vec<Vec<&str>> = match level {
                "+" => vec![vec!["a"], vec!["\u{1}zz"]],
                "#" => vec![vec![], vec!["a"], vec!["\u{1}zz", "b"]],
                l => vec![vec![l]],
            };
            for c in choices {
                let mut p = prefix.clone();
                p.extend(c.iter().map(|s| (*s).to_owned()));
                next.push(p);
            }
        }
        out = next;
        // Keep the work bounded: a sample of the instances, each still complete.
        out.truncate(64);
    }
    out.into_iter()
        .map(|levels| (!levels.is_empty()).then(|| levels.join("/")))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\n');
    let Some(filter) = parts.next().and_then(|f| SubtopicPattern::parse(f).ok()) else {
        return;
    };
    let patterns: Vec<SubtopicPattern> = parts
        .take(6)
        .filter_map(|p| SubtopicPattern::parse(p).ok())
        .collect();
    let fsub = Some(filter.as_str()).filter(|s| !s.is_empty());
    let covered = covers(&patterns, fsub);
    for t in instances(&filter) {
        let t = t.as_deref();
        assert!(
            filter.matches(t),
            "{filter} does not match its instance {t:?}"
        );
        if covered {
            assert!(
                patterns.iter().any(|p| p.matches(t)),
                "{patterns:?} cover {filter} but miss {t:?}"
            );
        }
        for p in &patterns {
            if p.matches(t) {
                assert!(
                    p.overlaps(fsub),
                    "{p} and {filter} share {t:?} but do not overlap"
                );
            }
        }
    }
    for p in &patterns {
        if covers(std::slice::from_ref(p), fsub) {
            assert!(
                p.overlaps(fsub),
                "{p} covers {filter} but does not overlap it"
            );
        }
        if !fsub.is_some_and(|s| s.contains(['+', '#'])) {
            assert_eq!(p.overlaps(fsub), p.matches(fsub));
        }
    }
});
