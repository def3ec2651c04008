//! The names every benchmark shares: tenant `bench`, things `pub-<i>` and `sub-<i>` with
//! known keys, channels `pair-<i>` (one per publisher/subscriber pair) and `fan` (fan-in and
//! fan-out), and the Fleetward policy that grants exactly that.

use std::sync::Arc;

use fleetward_policy::{
    Actions, BuildError, Channel, CredentialMode, DeviceCa, Engine, Grant, GrantSubject, KeyDigest,
    Qos, Resources, Snapshot, Tenant, Thing, ThingX509,
};

/// The tenant every benchmark thing belongs to.
pub const TENANT: &str = "bench";

/// The channel fan-in and fan-out publish and subscribe on.
pub const FAN_CHANNEL: &str = "fan";

/// The name of publisher `i`.
pub fn publisher(i: usize) -> String {
    format!("pub-{i}")
}

/// The name of subscriber `i`.
pub fn subscriber(i: usize) -> String {
    format!("sub-{i}")
}

/// The MQTT username of `thing`.
pub fn username(thing: &str) -> String {
    format!("{TENANT}/{thing}")
}

/// The key of `thing` (its MQTT password).
pub fn key(thing: &str) -> String {
    format!("bench-key-{thing}-0123456789")
}

/// The topic pair `i` publishes and subscribes on.
pub fn pair_topic(i: usize) -> String {
    format!("m/{TENANT}/c/pair-{i}/data")
}

/// The topic of fan-in and fan-out.
pub fn fan_topic() -> String {
    format!("m/{TENANT}/c/{FAN_CHANNEL}/data")
}

fn thing(name: String) -> Thing {
    Thing {
        x509: Default::default(),
        credential_mode: Default::default(),
        attributes: Default::default(),
        tenant: TENANT.into(),
        key_digests: vec![KeyDigest::of(key(&name).as_bytes())],
        name,
        disabled: false,
        mountpoint: None,
        max_connections: None,
    }
}

fn grant(thing: &str, channel: &str, actions: Actions) -> Grant {
    Grant {
        tenant: TENANT.into(),
        name: format!("{thing}-{channel}"),
        subject: GrantSubject::Thing(thing.into()),
        channel: channel.into(),
        actions,
        allow: Vec::new(),
        deny: Vec::new(),
    }
}

fn channel(name: String) -> Channel {
    Channel {
        history_retention_secs: Default::default(),
        uid: String::new(),
        tenant: TENANT.into(),
        name,
        max_qos: Qos::AtLeastOnce,
        retained_allowed: false,
        delivery_metadata: false,
        max_message_size: None,
    }
}

/// `policy` with the `fan` channel keeping a day of history, and the channels `pair-<i>` for
/// every `i` from `pairs_from` on.
pub fn with_history(
    policy: &Snapshot,
    pairs_from: Option<usize>,
) -> Result<Arc<Snapshot>, BuildError> {
    let mut snapshot = policy.clone();
    let keeps = |name: &str| {
        name == FAN_CHANNEL
            || name
                .strip_prefix("pair-")
                .and_then(|i| i.parse::<usize>().ok())
                .zip(pairs_from)
                .is_some_and(|(i, from)| i >= from)
    };
    let kept: Vec<Channel> = snapshot
        .channels()
        .filter(|c| keeps(&c.name))
        .cloned()
        .collect();
    for mut channel in kept {
        channel.history_retention_secs = Some(86_400);
        snapshot.upsert_channel(channel);
    }
    Ok(Arc::new(snapshot))
}

/// The policy of `pairs` pairs: things `pub-<i>` and `sub-<i>`, channel `pair-<i>` that the
/// first may publish and the second subscribe to, and channel `fan` that every publisher may
/// publish and every subscriber subscribe to. Default tenant limits (none).
pub fn policy(pairs: usize) -> Result<Arc<Snapshot>, BuildError> {
    policy_with(pairs, Engine::Builtin)
}

/// [`policy`] with the tenant's authorization `engine`; for `cedar`, the Cedar engine attached
/// as the dataplane attaches it (the Connections translated into Cedar permit policies).
pub fn policy_with(pairs: usize, engine: Engine) -> Result<Arc<Snapshot>, BuildError> {
    policy_with_ca(pairs, engine, None)
}

/// [`policy_with`], and with `device_ca` the tenant trusts it and every thing signs in with
/// its key or a certificate from it (the default rule: CN or URI SAN names the thing).
pub fn policy_with_ca(
    pairs: usize,
    engine: Engine,
    device_ca: Option<DeviceCa>,
) -> Result<Arc<Snapshot>, BuildError> {
    let mut r = Resources::default();
    let by_certificate = device_ca.is_some();
    r.tenants.push(Tenant {
        provisioning: Default::default(),
        device_ca,
        engine,
        uid: String::new(),
        name: TENANT.into(),
        suspended: false,
        limits: Default::default(),
        web: Default::default(),
    });
    r.channels.push(channel(FAN_CHANNEL.into()));
    for i in 0..pairs {
        let pair = format!("pair-{i}");
        let (p, s) = (publisher(i), subscriber(i));
        r.grants.push(grant(&p, &pair, Actions::PUBLISH));
        r.grants.push(grant(&s, &pair, Actions::SUBSCRIBE));
        r.grants.push(grant(&p, FAN_CHANNEL, Actions::PUBLISH));
        r.grants.push(grant(&s, FAN_CHANNEL, Actions::SUBSCRIBE));
        r.things.push(thing(p));
        r.things.push(thing(s));
        r.channels.push(channel(pair));
    }
    if by_certificate {
        for t in &mut r.things {
            t.credential_mode = CredentialMode::KeyOrCertificate;
            t.x509 = Some(ThingX509::default());
        }
    }
    let snapshot = Snapshot::from_resources(1, r)?;
    Ok(Arc::new(fleetward_dataplane::sync::engines::attach(
        snapshot,
    )))
}

#[cfg(test)]
mod tests {
    use fleetward_policy::{Credential, PolicyEvaluator};

    use super::*;

    #[test]
    fn the_cedar_policy_decides_as_the_builtin_one() {
        use fleetward_policy::{Action, Subject, TopicLimits, parse_topic_name};
        let builtin = policy_with(3, Engine::Builtin).expect("valid");
        let cedar = policy_with(3, Engine::Cedar).expect("valid");
        let limits = TopicLimits::default();
        for (who, topic) in [
            (publisher(1), pair_topic(1)),
            (publisher(1), pair_topic(2)),
            (subscriber(2), fan_topic()),
        ] {
            let subject = Subject::thing(TENANT, who.as_str());
            let t = parse_topic_name(&topic, &limits).expect("a topic");
            for action in [Action::Publish, Action::Subscribe] {
                let (b, c) = (
                    builtin.authorize(&subject, action, &t),
                    cedar.authorize(&subject, action, &t),
                );
                assert_eq!(b.is_allowed(), c.is_allowed(), "{who} {action:?} {topic}");
            }
        }
    }

    #[test]
    fn the_policy_admits_the_keys_the_load_generator_sends() {
        let snapshot = policy(3).expect("a valid policy");
        assert_eq!(username(&publisher(2)), "bench/pub-2");
        let pass = key(&publisher(2));
        let subject = snapshot
            .authenticate(&Credential::Thing {
                tenant: TENANT,
                thing: "pub-2",
                key: pass.as_bytes(),
            })
            .expect("the key of pub-2 is accepted");
        assert_eq!(subject.name, "pub-2");
        let wrong = snapshot.authenticate(&Credential::Thing {
            tenant: TENANT,
            thing: "pub-2",
            key: key(&publisher(1)).as_bytes(),
        });
        assert!(wrong.is_err(), "another thing's key is refused");
    }
}
