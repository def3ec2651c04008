use std::sync::Arc;

use fleetward_crds::ResourceStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::*;
use crate::index::Index;
use crate::index::tests::example_objects;
use crate::k8s::observed::{Observed, ShownStatus};
use crate::metrics::Metrics;
use crate::shared::SharedIndex;

pub(crate) fn feed() -> Feed {
    Feed {
        index: Arc::new(SharedIndex::new(Index::new())),
        observed: Arc::new(Observed::new()),
        metrics: Arc::new(Metrics::new()),
    }
}

/// What the API server shows of `key`: a status with one condition for every other object.
fn shown(key: &ObjectKey, i: usize) -> Shown {
    let status = i.is_multiple_of(2).then(|| {
        ShownStatus::Resource(ResourceStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Accepted".into(),
                message: format!("{key} is served"),
                observed_generation: Some(1),
                last_transition_time: Time(
                    k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("a time"),
                ),
            }],
            observed_generation: Some(1),
        })
    });
    Shown {
        uid: Some(format!("uid-{i}")),
        generation: Some(1),
        deleting: false,
        status,
    }
}

/// A feed holding the examples, as the watches feed them, every kind but Groups with a
/// resourceVersion (Groups still listing).
pub(crate) fn fed() -> Feed {
    let feed = feed();
    for (i, object) in example_objects().into_iter().enumerate() {
        let key = object.key().expect("examples are named");
        if let Object::Tenant(t) = &object {
            feed.observed.claim(&key.name, &t.namespace);
        }
        feed.index.update(|idx| idx.apply(object));
        if key.kind != Kind::Secret {
            feed.observed.set(key.clone(), shown(&key, i));
        }
    }
    for (i, kind) in WATCHED_KINDS.into_iter().enumerate() {
        if kind != Kind::Group {
            feed.observed.seen_version(kind, 100 + i as u64);
        }
    }
    feed
}

fn secrets() -> impl Iterator<Item = Object> {
    example_objects()
        .into_iter()
        .filter(|o| matches!(o, Object::Secret(_)))
}

/// What an index serves, each password hash replaced by whether there is one: a hash is
/// salted afresh by each index that derives it.
fn served(index: &Index) -> fleetward_policy::Resources {
    let mut resources = index.snapshot().to_resources();
    for user in &mut resources.users {
        user.password_hash = user.password_hash.as_ref().map(|_| "a hash".to_owned());
    }
    resources
}

#[test]
fn a_saved_state_restores_the_index_the_shown_statuses_and_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let saved = fed();
    let count = save(dir.path(), &saved).expect("saved");
    let groups = saved.index.read().keys_of(Kind::Group);
    assert!(!groups.is_empty(), "the examples have Groups");

    let restored = feed();
    let resume = restore(dir.path(), &restored);
    let expected: Resume = WATCHED_KINDS
        .into_iter()
        .filter_map(|k| Some((k, saved.observed.version(k)?.to_string())))
        .collect();
    assert_eq!(
        resume, expected,
        "every kind with a version resumes from it"
    );
    for kind in WATCHED_KINDS {
        assert_eq!(
            restored.observed.version(kind),
            saved.observed.version(kind)
        );
    }
    assert!(
        restored.index.read().keys_of(Kind::Secret).is_empty(),
        "Secrets are not saved: they are credentials"
    );
    assert!(
        restored.index.read().keys_of(Kind::Group).is_empty(),
        "a kind still listing is not saved: it is listed again"
    );
    let pending = restored
        .observed
        .ready()
        .expect_err("Groups and Secrets are still to list");
    assert!(
        pending.contains("Groups") && !pending.contains("Things"),
        "{pending}"
    );

    // The lists that follow: the Secrets of each namespace, and the Groups.
    for object in secrets() {
        restored.index.update(|idx| idx.apply(object));
    }
    for key in &groups {
        let group = saved.index.read().object(key).expect("a Group");
        restored.index.update(|idx| idx.apply(group));
        let shown = saved.observed.shown(key).expect("shown");
        restored.observed.set(key.clone(), shown);
    }
    saved.index.commit();
    restored.index.commit();
    let (saved_index, restored_index) = (saved.index.read(), restored.index.read());
    assert_eq!(
        served(&saved_index),
        served(&restored_index),
        "the restored index serves what the saved one did"
    );
    let mut keys = 0;
    for kind in WATCHED_KINDS {
        for key in saved_index.keys_of(kind) {
            assert_eq!(
                saved_index.status(&key),
                restored_index.status(&key),
                "{key}"
            );
            assert_eq!(
                saved.observed.shown(&key),
                restored.observed.shown(&key),
                "{key}"
            );
            keys += usize::from(kind != Kind::Group);
        }
    }
    assert_eq!(
        count, keys,
        "every object of a kind with a version was saved"
    );
}

#[test]
fn a_file_that_cannot_be_read_whole_resumes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), &fed()).expect("saved");
    let path = dir.path().join(FILE);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, &text[..text.len() / 2]).unwrap();
    let restored = feed();
    assert_eq!(restore(dir.path(), &restored), Resume::new());
    for kind in WATCHED_KINDS {
        assert_eq!(restored.observed.version(kind), None, "{kind:?} is listed");
    }
    assert!(restored.observed.ready().is_err());

    fs::write(&path, text.replacen("\"format\":1", "\"format\":99", 1)).unwrap();
    assert_eq!(
        restore(dir.path(), &feed()),
        Resume::new(),
        "another format"
    );
    fs::remove_file(&path).unwrap();
    assert_eq!(restore(dir.path(), &feed()), Resume::new(), "no file");
}

#[test]
fn saves_take_a_tenth_of_the_time_between_five_seconds_and_two_minutes_apart() {
    assert_eq!(pause_after(Duration::from_millis(100)), MIN_PAUSE);
    assert_eq!(pause_after(Duration::from_secs(1)), Duration::from_secs(9));
    assert_eq!(
        pause_after(Duration::from_secs(10)),
        Duration::from_secs(90)
    );
    assert_eq!(pause_after(Duration::from_secs(15)), MAX_PAUSE);
}
