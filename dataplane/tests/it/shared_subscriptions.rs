//! Shared subscriptions `$share/<group>/<filter>`: each message to one member, groups never
//! shared across tenants, the filter authorized like any other.

use crate::common;

use std::time::Duration;

use common::{Fixture, v4, v5};

const QUIET: Duration = Duration::from_millis(700);

#[tokio::test]
async fn a_shared_group_splits_messages_and_stays_inside_its_tenant() {
    let fx = Fixture::start().await;
    let mut a = v5::connect(fx.addr, "acme", "reader", "a").await;
    let mut b = v5::connect(fx.addr, "acme", "reader", "b").await;
    let mut other_tenant = v5::connect(fx.addr, "globex", "reader", "a").await;
    let mut everything = v4::connect(fx.addr, "acme", "reader", "all").await;
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.subscribe("$share/g/m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
                .await,
            vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
        );
    }
    assert_eq!(
        other_tenant
            .subscribe("$share/g/m/globex/c/telemetry/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    // The filter inside `$share` is checked like any other.
    assert_eq!(
        other_tenant
            .subscribe("$share/g/m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    everything
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    for i in 0..10 {
        sensor
            .client
            .publish(
                "m/acme/c/telemetry/x",
                v4::QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("queued");
    }
    let mut got = Vec::new();
    let (mut na, mut nb) = (0, 0);
    while let Some(p) = a.next_publish(QUIET).await {
        got.push(p.payload.to_vec());
        na += 1;
    }
    while let Some(p) = b.next_publish(QUIET).await {
        got.push(p.payload.to_vec());
        nb += 1;
    }
    got.sort();
    let mut expected: Vec<Vec<u8>> = (0..10).map(|i| format!("{i}").into_bytes()).collect();
    expected.sort();
    assert_eq!(got, expected, "each message exactly once across the group");
    assert!(na > 0 && nb > 0, "both members served: {na} and {nb}");
    assert!(other_tenant.next_publish(QUIET).await.is_none());
    let mut all = 0;
    while everything.next_publish(QUIET).await.is_some() {
        all += 1;
    }
    assert_eq!(all, 10, "a plain subscription still sees every message");
}

#[tokio::test]
async fn persistent_sessions_may_not_join_shared_groups() {
    let fx = Fixture::start().await;
    let mut o = v5::options(fx.addr, "acme", "reader", "p");
    o.set_session_expiry_interval(Some(60));
    let mut c = v5::connect_with(o).await.expect("connects");
    assert_eq!(
        c.subscribe("$share/g/m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::SharedSubscriptionsNotSupported]
    );
}

#[tokio::test]
async fn a_resumed_session_may_not_join_shared_groups_even_if_it_will_not_be_kept() {
    let fx = Fixture::start().await;
    let mut o = v5::options(fx.addr, "acme", "reader", "p2");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut c = v5::connect_with(o.clone()).await.expect("connects");
    c.subscribe("m/acme/c/telemetry/a", v5::QoS::AtLeastOnce)
        .await;
    c.client.disconnect().await.expect("queued");
    assert!(c.closed_within(Duration::from_secs(3)).await.is_some());
    // Resumed with expiry 0: the session ends with this connection, but its router link is
    // the persistent one it resumed.
    o.set_session_expiry_interval(None);
    let mut back = v5::connect_with(o).await.expect("connects");
    assert!(back.connack.session_present);
    assert_eq!(
        back.subscribe("$share/g/m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::SharedSubscriptionsNotSupported]
    );
    assert!(
        fx.dataplane
            .metrics()
            .refusals("subscribe", "shared_subscription_persistent")
            >= 1
    );
}
