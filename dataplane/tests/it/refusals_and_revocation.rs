//! Refusals with their protocol codes, and revocation on a new snapshot or delta (which re-checks
//! only the sessions it reaches), driven by rumqttc.

use crate::common;

use std::time::{Duration, Instant};

use common::{Fixture, key, resources, v4, v5};

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn connect_refusals_have_the_versions_codes() {
    let fx = Fixture::start().await;
    // Wrong key.
    let mut o = v4::options(fx.addr, "acme", "sensor", "c");
    o.set_credentials("acme/sensor", key("globex", "sensor"));
    assert_eq!(
        v4::connect_with(o).await.err().as_deref(),
        Some("NotAuthorized")
    );
    let mut o = v5::options(fx.addr, "acme", "sensor", "c");
    o.set_credentials("acme/sensor", "wrong");
    assert_eq!(
        v5::connect_with(o).await.err().as_deref(),
        Some("BadUserNamePassword")
    );
    // Unknown thing, and a username that is not <tenant>/<thing>.
    let mut o = v5::options(fx.addr, "acme", "nobody", "c");
    o.set_credentials("acme/nobody", "x");
    assert_eq!(
        v5::connect_with(o).await.err().as_deref(),
        Some("BadUserNamePassword")
    );
    let mut o = v4::options(fx.addr, "acme", "sensor", "c");
    o.set_credentials("sensor", key("acme", "sensor"));
    assert_eq!(
        v4::connect_with(o).await.err().as_deref(),
        Some("BadUserNamePassword")
    );
    // A disabled thing.
    let mut fx = fx;
    let mut r = resources();
    r.things
        .iter_mut()
        .filter(|t| t.name == "sensor")
        .for_each(|t| t.disabled = true);
    fx.apply(r);
    let o = v4::options(fx.addr, "acme", "sensor", "c");
    assert_eq!(
        v4::connect_with(o).await.err().as_deref(),
        Some("NotAuthorized")
    );
    let o = v5::options(fx.addr, "acme", "sensor", "c");
    assert_eq!(
        v5::connect_with(o).await.err().as_deref(),
        Some("NotAuthorized")
    );
    assert!(
        fx.dataplane
            .metrics()
            .refusals("connect", "subject_disabled")
            >= 2
    );
}

#[tokio::test]
async fn subscribe_refusals_are_per_filter() {
    let fx = Fixture::start().await;
    let mut v3 = v4::connect(fx.addr, "acme", "reader", "r3").await;
    let mut v5c = v5::connect(fx.addr, "acme", "reader", "r5").await;
    let mut stranger = v5::connect(fx.addr, "acme", "stranger", "s").await;
    // No grant at all.
    assert_eq!(
        stranger
            .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
            .await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    // A channel without a grant (the sensor may publish there, not subscribe), an unknown
    // channel, $SYS, wildcards in the tenant or channel level, and a malformed filter.
    let refused = [
        "$SYS/#",
        "m/acme/c/+/#",
        "m/+/c/telemetry/#",
        "m/acme/c/#",
        "m/acme/c/nochannel/#",
    ];
    for f in refused {
        assert_eq!(
            v3.subscribe(f, v4::QoS::AtMostOnce).await,
            vec![v4::SubscribeReasonCode::Failure],
            "{f}"
        );
        assert_eq!(
            v5c.subscribe(f, v5::QoS::AtMostOnce).await,
            vec![v5::SubscribeReasonCode::NotAuthorized],
            "{f}"
        );
    }
    let mut sensor = v5::connect(fx.addr, "acme", "sensor", "s5").await;
    assert_eq!(
        sensor
            .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
            .await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    // One SUBSCRIBE, several filters: each gets its own code.
    use rumqttc::v5::mqttbytes::v5::Filter;
    v5c.client
        .subscribe_many([
            Filter::new("m/acme/c/telemetry/a", v5::QoS::AtLeastOnce),
            Filter::new("m/globex/c/telemetry/a", v5::QoS::AtLeastOnce),
            Filter::new("m/acme/c/commands/+", v5::QoS::AtMostOnce),
        ])
        .await
        .expect("queued");
    match v5c.next(WAIT).await {
        Some(Ok(v5::Packet::SubAck(a))) => assert_eq!(
            a.return_codes,
            vec![
                v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce),
                v5::SubscribeReasonCode::NotAuthorized,
                v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce),
            ]
        ),
        other => panic!("no SUBACK: {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_v5_publish_gets_puback_0x87_and_the_connection_stays() {
    let fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    // The reader may not publish.
    reader
        .client
        .publish("m/acme/c/telemetry/x", v5::QoS::AtLeastOnce, false, "no")
        .await
        .expect("queued");
    loop {
        match reader.next(WAIT).await {
            Some(Ok(v5::Packet::PubAck(a))) => {
                assert_eq!(a.reason, v5::PubAckReason::NotAuthorized);
                break;
            }
            Some(Ok(v5::Packet::Publish(p))) => panic!("a refused publish was delivered: {p:?}"),
            Some(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
    // Still connected and served.
    let sensor = v5::connect(fx.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish("m/acme/c/telemetry/x", v5::QoS::AtLeastOnce, false, "yes")
        .await
        .expect("queued");
    let got = reader.next_publish(WAIT).await.expect("delivered");
    assert_eq!(&got.payload[..], b"yes");
    assert_eq!(fx.dataplane.metrics().refusals("publish", "no_grant"), 1);
}

/// The front-end remembers the last topic a session published on and what the policy said of
/// it; a new snapshot must be asked again, on that same topic.
#[tokio::test]
async fn a_revoked_publish_grant_refuses_the_next_publish_on_the_same_topic() {
    let mut fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    let mut sensor = v5::connect(fx.addr, "acme", "sensor", "s").await;
    let client = sensor.client.clone();
    let publish = |payload: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish("m/acme/c/telemetry/1", v5::QoS::AtLeastOnce, false, payload)
                .await
                .expect("queued");
        }
    };
    async fn puback(sensor: &mut v5::Client) -> v5::PubAckReason {
        loop {
            match sensor.next(WAIT).await {
                Some(Ok(v5::Packet::PubAck(a))) => return a.reason,
                Some(Ok(_)) => {}
                other => panic!("no PUBACK: {other:?}"),
            }
        }
    }
    for payload in ["one", "two"] {
        publish(payload).await;
        assert_eq!(puback(&mut sensor).await, v5::PubAckReason::Success);
        let got = reader.next_publish(WAIT).await.expect("delivered");
        assert_eq!(&got.payload[..], payload.as_bytes());
    }
    let mut r = resources();
    r.grants.retain(|g| g.name != "sensor-telemetry");
    fx.apply(r);
    // Let the sessions see the new snapshot (the reader's subscription is unaffected).
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish("after").await;
    assert_eq!(puback(&mut sensor).await, v5::PubAckReason::NotAuthorized);
    assert!(
        reader.next_publish(QUIET).await.is_none(),
        "a publish on a revoked grant was delivered"
    );
    assert_eq!(fx.dataplane.metrics().refusals("publish", "no_grant"), 1);
}

#[tokio::test]
async fn a_revoked_grant_stops_deliveries_within_a_second() {
    let mut fx = Fixture::start().await;
    let mut v3 = v4::connect(fx.addr, "acme", "reader", "r3").await;
    let mut v5c = v5::connect(fx.addr, "acme", "reader", "r5").await;
    v3.subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    v5c.subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish(
            "m/acme/c/telemetry/1",
            v4::QoS::AtLeastOnce,
            false,
            "before",
        )
        .await
        .expect("queued");
    assert!(v3.next_publish(WAIT).await.is_some());
    assert!(v5c.next_publish(WAIT).await.is_some());

    let mut r = resources();
    r.grants.retain(|g| g.name != "reader-telemetry");
    let revoked_at = Instant::now();
    fx.apply(r);
    // Publish continuously; nothing published one second after the change arrives.
    let publisher = tokio::spawn(async move {
        for i in 0..30 {
            sensor
                .client
                .publish(
                    "m/acme/c/telemetry/1",
                    v4::QoS::AtLeastOnce,
                    false,
                    format!("{i}"),
                )
                .await
                .expect("queued");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sensor
    });
    for c in [&mut v3] {
        while let Some(p) = c.next_publish(Duration::from_millis(1500)).await {
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "delivered {:?} after revocation",
                p.payload
            );
        }
    }
    while let Some(p) = v5c.next_publish(Duration::from_millis(200)).await {
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "{p:?}");
    }
    publisher.await.expect("publisher");
    // The sessions stay connected: a revoked grant removes the subscription only.
    assert!(v3.closed_within(QUIET).await.is_none());
    assert_eq!(
        fx.dataplane.metrics().refusals("revoked", "subscription"),
        2
    );
}

#[tokio::test]
async fn a_channel_deleted_and_created_again_in_one_snapshot_revokes_its_subscriptions() {
    // acme's `telemetry` under `uid`.
    let under = |uid: &str| {
        let mut r = resources();
        for c in &mut r.channels {
            if c.tenant == "acme" && c.name == "telemetry" {
                c.uid = uid.into();
            }
        }
        r
    };
    let mut fx = Fixture::start().await;
    fx.apply(under("c1"));
    let mut reader = v4::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    let publish = |text: &'static str| {
        let client = sensor.client.clone();
        async move {
            client
                .publish("m/acme/c/telemetry/1", v4::QoS::AtLeastOnce, false, text)
                .await
                .expect("queued");
        }
    };
    publish("before").await;
    assert!(reader.next_publish(WAIT).await.is_some());
    // The same uid: nothing happens.
    fx.apply(under("c1"));
    publish("same").await;
    assert!(reader.next_publish(WAIT).await.is_some());
    // A new uid: the subscription was to the deleted channel; the session stays.
    fx.apply(under("c2"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish("after").await;
    assert!(reader.next_publish(QUIET).await.is_none());
    assert!(reader.closed_within(QUIET).await.is_none());
    assert_eq!(
        fx.dataplane.metrics().refusals("revoked", "subscription"),
        1
    );
    // Subscribing again is to the new channel.
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    publish("new").await;
    let got = reader.next_publish(WAIT).await.expect("delivered");
    assert_eq!(&got.payload[..], b"new");
}

#[tokio::test]
async fn a_disabled_or_deleted_thing_is_disconnected_with_0x98() {
    let mut fx = Fixture::start().await;
    let mut v5c = v5::connect(fx.addr, "acme", "reader", "r5").await;
    let mut v3 = v4::connect(fx.addr, "acme", "reader", "r3").await;
    let mut deleted = v5::connect(fx.addr, "acme", "sensor", "s5").await;
    let mut untouched = v5::connect(fx.addr, "globex", "reader", "r5").await;
    let mut r = resources();
    r.things
        .iter_mut()
        .filter(|t| t.tenant == "acme" && t.name == "reader")
        .for_each(|t| t.disabled = true);
    r.things
        .retain(|t| !(t.tenant == "acme" && t.name == "sensor"));
    r.grants
        .retain(|g| !(g.tenant == "acme" && g.name.starts_with("sensor")));
    let at = Instant::now();
    fx.apply(r);
    let e = v5c.closed_within(WAIT).await.expect("disconnected");
    assert!(e.contains("AdministrativeAction"), "{e}");
    assert!(at.elapsed() < Duration::from_secs(1));
    let e = deleted.closed_within(WAIT).await.expect("disconnected");
    assert!(e.contains("AdministrativeAction"), "{e}");
    assert!(v3.closed_within(WAIT).await.is_some());
    assert!(untouched.closed_within(QUIET).await.is_none());
}

#[tokio::test]
async fn a_key_removed_after_rotation_disconnects_its_sessions() {
    let mut fx = Fixture::start().await;
    let mut r = resources();
    let new_key = "the-new-key-of-acme-reader";
    for t in r
        .things
        .iter_mut()
        .filter(|t| t.tenant == "acme" && t.name == "reader")
    {
        t.key_digests
            .push(fleetward_policy::KeyDigest::of(new_key.as_bytes()));
    }
    fx.apply(r.clone());
    let mut old = v5::connect(fx.addr, "acme", "reader", "old").await;
    let mut o = v5::options(fx.addr, "acme", "reader", "new");
    o.set_credentials("acme/reader", new_key);
    let mut new = v5::connect_with(o).await.expect("the new key works");
    for t in r
        .things
        .iter_mut()
        .filter(|t| t.tenant == "acme" && t.name == "reader")
    {
        t.key_digests.remove(0);
    }
    fx.apply(r);
    let e = old
        .closed_within(WAIT)
        .await
        .expect("old key's session ends");
    assert!(e.contains("AdministrativeAction"), "{e}");
    assert!(new.closed_within(QUIET).await.is_none());
}

#[tokio::test]
async fn a_suspended_tenant_is_disconnected() {
    let mut fx = Fixture::start().await;
    let mut c = v5::connect(fx.addr, "globex", "reader", "r").await;
    let mut r = resources();
    r.tenants
        .iter_mut()
        .filter(|t| t.name == "globex")
        .for_each(|t| t.suspended = true);
    fx.apply(r);
    let e = c.closed_within(WAIT).await.expect("disconnected");
    assert!(e.contains("AdministrativeAction"), "{e}");
}

#[tokio::test]
async fn without_its_key_a_disabled_thing_or_suspended_tenant_looks_unknown() {
    let mut fx = Fixture::start().await;
    let mut r = resources();
    r.things
        .iter_mut()
        .filter(|t| t.tenant == "acme" && t.name == "sensor")
        .for_each(|t| t.disabled = true);
    r.tenants
        .iter_mut()
        .filter(|t| t.name == "globex")
        .for_each(|t| t.suspended = true);
    fx.apply(r);
    let v5_with = |tenant: &str, thing: &str, pass: String| {
        let mut o = v5::options(fx.addr, tenant, thing, "c");
        o.set_credentials(format!("{tenant}/{thing}"), pass);
        v5::connect_with(o)
    };
    // Unknown thing, wrong key, disabled thing, suspended tenant: one answer without the key.
    for (tenant, thing) in [
        ("acme", "nobody"),
        ("acme", "reader"),
        ("acme", "sensor"),
        ("globex", "reader"),
        ("nope", "reader"),
    ] {
        assert_eq!(
            v5_with(tenant, thing, "wrong".into())
                .await
                .err()
                .as_deref(),
            Some("BadUserNamePassword"),
            "{tenant}/{thing} with a wrong key"
        );
        let mut o = v4::options(fx.addr, tenant, thing, "c");
        o.set_credentials(format!("{tenant}/{thing}"), "wrong");
        assert_eq!(
            v4::connect_with(o).await.err().as_deref(),
            Some("NotAuthorized"),
            "{tenant}/{thing} with a wrong key over v3"
        );
    }
    // With its key, the thing learns why.
    for (tenant, thing) in [("acme", "sensor"), ("globex", "reader")] {
        assert_eq!(
            v5_with(tenant, thing, key(tenant, thing))
                .await
                .err()
                .as_deref(),
            Some("NotAuthorized"),
            "{tenant}/{thing} with its key"
        );
    }
    let metrics = fx.dataplane.metrics();
    assert_eq!(metrics.refusals("connect", "unknown_subject"), 0);
    assert_eq!(metrics.refusals("connect", "unknown_tenant"), 0);
    assert_eq!(metrics.refusals("connect", "subject_disabled"), 1);
    assert_eq!(metrics.refusals("connect", "tenant_suspended"), 1);
}

/// A subtopic deny added by a new snapshot withholds its topics from the wildcard
/// subscriptions that overlap it, which stay (no revocation), in v3 and v5; `+/+` is granted.
#[tokio::test]
async fn a_deny_added_later_withholds_its_topics_from_live_wildcard_subscriptions() {
    let mut fx = Fixture::start().await;
    let mut v3 = v4::connect(fx.addr, "acme", "reader", "r3").await;
    let mut v5c = v5::connect(fx.addr, "acme", "reader", "r5").await;
    assert_eq!(
        v3.subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
            .await,
        [v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce)]
    );
    assert_eq!(
        v5c.subscribe("m/acme/c/telemetry/+/+", v5::QoS::AtLeastOnce)
            .await,
        [v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    let publish = async |topic: &str, payload: String| {
        sensor
            .client
            .publish(topic, v4::QoS::AtLeastOnce, false, payload)
            .await
            .expect("queued");
    };
    let mut r = resources();
    for g in r.grants.iter_mut().filter(|g| g.name == "reader-telemetry") {
        g.deny = vec!["test/nosubscribe".parse().expect("a valid pattern")];
    }
    fx.apply(r);
    // Rounds of the denied topic, then a marker: once a round passes without the denied one
    // (the sessions have re-checked their subscriptions), none may get through again.
    let mut clean_rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    for round in 0.. {
        assert!(Instant::now() < deadline, "the deny never took effect");
        publish(
            "m/acme/c/telemetry/test/nosubscribe",
            format!("secret-{round}"),
        )
        .await;
        let marker = format!("marker-{round}");
        publish("m/acme/c/telemetry/test/allowed", marker.clone()).await;
        let mut leaked = false;
        for _ in 0..2 {
            let p = v3
                .next_publish(Duration::from_secs(10))
                .await
                .expect("the marker arrives (v3)");
            leaked |= p.topic.ends_with("nosubscribe");
            if p.payload == marker.as_bytes() {
                break;
            }
        }
        for _ in 0..2 {
            let p = v5c
                .next_publish(Duration::from_secs(10))
                .await
                .expect("the marker arrives (v5)");
            leaked |= &p.topic[..] == b"m/acme/c/telemetry/test/nosubscribe";
            if p.payload == marker.as_bytes() {
                break;
            }
        }
        if leaked {
            assert_eq!(
                clean_rounds, 0,
                "a denied topic got through after a clean round"
            );
            continue;
        }
        clean_rounds += 1;
        if clean_rounds == 3 {
            break;
        }
    }
    assert_eq!(
        fx.dataplane.metrics().refusals("revoked", "subscription"),
        0
    );
}

/// Sessions woken to re-check by policy changes so far, and by the last change.
fn rechecks(fx: &Fixture) -> (u64, i64) {
    fx.dataplane.metrics().policy_rechecks()
}

/// Waits until `done` holds, for at most `WAIT`.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test]
async fn a_delta_for_one_tenant_re_checks_only_that_tenants_session() {
    let mut fx = Fixture::start().await;
    let mut acme = v4::connect(fx.addr, "acme", "reader", "a").await;
    let mut globex = v4::connect(fx.addr, "globex", "reader", "g").await;
    acme.subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    globex
        .subscribe("m/globex/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    let (before, _) = rechecks(&fx);

    fx.apply_delta(|d| {
        d.grants.removals.push(fleetward_policy::ResourceName::new(
            "acme",
            "reader-telemetry",
        ));
    });
    assert!(eventually(|| rechecks(&fx).0 > before).await, "no re-check");
    assert_eq!(
        rechecks(&fx),
        (before + 1, 1),
        "only acme's reader re-checks"
    );
    // The revocation holds as before: acme's subscription is gone, globex's is not.
    assert!(eventually(|| fx.dataplane.metrics().refusals("revoked", "subscription") == 1).await);
    let mut sensors = Vec::new();
    for (tenant, client) in [("acme", &mut acme), ("globex", &mut globex)] {
        let sensor = v4::connect(fx.addr, tenant, "sensor", &format!("s-{tenant}")).await;
        sensor
            .client
            .publish(
                format!("m/{tenant}/c/telemetry/1"),
                v4::QoS::AtLeastOnce,
                false,
                "after",
            )
            .await
            .expect("queued");
        let got = client.next_publish(QUIET).await;
        assert_eq!(got.is_some(), tenant == "globex", "{tenant}: {got:?}");
        sensors.push(sensor);
    }

    // A full snapshot re-checks everyone (the two readers and the two sensors).
    let (before, _) = rechecks(&fx);
    fx.apply(resources());
    assert!(eventually(|| rechecks(&fx).0 > before).await, "no re-check");
    assert_eq!(rechecks(&fx), (before + 4, 4));
}

#[tokio::test]
async fn a_delta_that_disables_a_thing_ends_its_session_only() {
    let mut fx = Fixture::start().await;
    let mut acme = v4::connect(fx.addr, "acme", "reader", "a").await;
    let mut globex = v4::connect(fx.addr, "globex", "reader", "g").await;
    let mut disabled = resources()
        .things
        .into_iter()
        .find(|t| t.tenant == "acme" && t.name == "reader")
        .expect("in the fixture");
    disabled.disabled = true;
    fx.apply_delta(|d| d.things.upserts.push(disabled));
    assert!(acme.closed_within(WAIT).await.is_some());
    assert!(globex.closed_within(QUIET).await.is_none());
    assert_eq!(rechecks(&fx).1, 1);
}
