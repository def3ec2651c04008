//! Delivery at every QoS, and tenant isolation, driven by rumqttc (v3.1.1 and v5).

use crate::common;

use std::time::Duration;

use common::{Fixture, v4, v5};

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn v3_delivery_within_a_channel_at_qos_0_1_and_2() {
    let fx = Fixture::start().await;
    let mut reader = v4::connect(fx.addr, "acme", "reader", "r1").await;
    assert_eq!(
        reader
            .subscribe("m/acme/c/telemetry/#", v4::QoS::ExactlyOnce)
            .await,
        vec![v4::SubscribeReasonCode::Success(v4::QoS::ExactlyOnce)]
    );
    let mut sensor = v4::connect(fx.addr, "acme", "sensor", "s1").await;
    for (i, qos) in [
        v4::QoS::AtMostOnce,
        v4::QoS::AtLeastOnce,
        v4::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("m/acme/c/telemetry/room/{i}");
        sensor
            .client
            .publish(&topic, qos, false, format!("payload-{i}"))
            .await
            .expect("queued");
        let got = reader.next_publish(WAIT).await.expect("delivered");
        assert_eq!(got.topic, topic);
        assert_eq!(&got.payload[..], format!("payload-{i}").as_bytes());
        // Delivered at min(published, granted).
        assert_eq!(got.qos, qos);
    }
    // The publisher saw its acks: PUBACK for QoS 1, PUBREC then PUBCOMP for QoS 2.
    let mut acks = Vec::new();
    while let Some(Ok(p)) = sensor.next(QUIET).await {
        acks.push(format!("{p:?}"));
    }
    assert!(acks.iter().any(|a| a.starts_with("PubAck")), "{acks:?}");
    assert!(acks.iter().any(|a| a.starts_with("PubRec")), "{acks:?}");
    assert!(acks.iter().any(|a| a.starts_with("PubComp")), "{acks:?}");
}

#[tokio::test]
async fn delivery_qos_is_capped_by_the_subscription_and_the_channel() {
    let fx = Fixture::start().await;
    let mut reader = v4::connect(fx.addr, "acme", "reader", "r1").await;
    // `commands` allows at most QoS 1: a QoS 2 request is granted 1.
    assert_eq!(
        reader
            .subscribe("m/acme/c/commands/#", v4::QoS::ExactlyOnce)
            .await,
        vec![v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce)]
    );
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtMostOnce)
        .await;
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s1").await;
    sensor
        .client
        .publish("m/acme/c/telemetry/a", v4::QoS::ExactlyOnce, false, "x")
        .await
        .expect("queued");
    assert_eq!(
        reader.next_publish(WAIT).await.expect("delivered").qos,
        v4::QoS::AtMostOnce
    );
    sensor
        .client
        .publish("m/acme/c/commands/a", v4::QoS::ExactlyOnce, false, "y")
        .await
        .expect("queued");
    assert_eq!(
        reader.next_publish(WAIT).await.expect("delivered").qos,
        v4::QoS::AtLeastOnce
    );
}

#[tokio::test]
async fn v5_delivery_with_user_properties_and_subscription_ids() {
    use rumqttc::v5::mqttbytes::v5::{PublishProperties, SubscribeProperties};
    let fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r1").await;
    reader
        .client
        .subscribe_with_properties(
            "m/acme/c/telemetry/+",
            v5::QoS::AtLeastOnce,
            SubscribeProperties {
                id: Some(42),
                user_properties: Vec::new(),
            },
        )
        .await
        .expect("queued");
    match reader.next(WAIT).await {
        Some(Ok(v5::Packet::SubAck(a))) => {
            assert_eq!(
                a.return_codes,
                vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
            )
        }
        other => panic!("no SUBACK: {other:?}"),
    }
    let sensor = v5::connect(fx.addr, "acme", "sensor", "s1").await;
    let props = PublishProperties {
        user_properties: vec![("site".into(), "north".into())],
        content_type: Some("text/plain".into()),
        ..PublishProperties::default()
    };
    sensor
        .client
        .publish_with_properties(
            "m/acme/c/telemetry/t1",
            v5::QoS::AtLeastOnce,
            false,
            "21.5",
            props,
        )
        .await
        .expect("queued");
    let got = reader.next_publish(WAIT).await.expect("delivered");
    assert_eq!(&got.topic[..], b"m/acme/c/telemetry/t1");
    assert_eq!(got.qos, v5::QoS::AtLeastOnce);
    let p = got.properties.expect("properties passed through");
    // The publisher's own properties first, then the dataplane's metadata (HTTP.md).
    assert_eq!(p.user_properties[0], ("site".into(), "north".into()));
    let names: Vec<&str> = p.user_properties[1..]
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "fleetward-publisher",
            "fleetward-protocol",
            "fleetward-created",
            "fleetward-id"
        ]
    );
    // The id is a UUIDv7 (version digit 7 at offset 14).
    let id = &p.user_properties[4].1;
    assert_eq!((id.len(), &id[14..15]), (36, "7"), "{id}");
    assert_eq!(p.user_properties[1].1, "thing:sensor");
    assert_eq!(p.user_properties[2].1, "mqtt");
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.subscription_identifiers, vec![42]);
}

#[tokio::test]
async fn tenants_with_the_same_names_see_nothing_of_each_other() {
    let fx = Fixture::start().await;
    let mut acme = v4::connect(fx.addr, "acme", "reader", "same-id").await;
    let mut globex = v5::connect(fx.addr, "globex", "reader", "same-id").await;
    assert_eq!(
        acme.subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
            .await,
        vec![v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce)]
    );
    // `#`, `m/+/c/+/#` and the other tenant's topics are refused, so they match nothing.
    for filter in ["#", "m/+/c/+/#", "m/globex/c/telemetry/#", "+/globex/#"] {
        assert_eq!(
            acme.subscribe(filter, v4::QoS::AtMostOnce).await,
            vec![v4::SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    for filter in ["#", "m/+/c/+/#", "m/acme/c/telemetry/#"] {
        assert_eq!(
            globex.subscribe(filter, v5::QoS::AtMostOnce).await,
            vec![v5::SubscribeReasonCode::NotAuthorized],
            "{filter}"
        );
    }
    assert_eq!(
        globex
            .subscribe("m/globex/c/telemetry/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    let acme_sensor = v4::connect(fx.addr, "acme", "sensor", "same-sensor").await;
    let globex_sensor = v4::connect(fx.addr, "globex", "sensor", "same-sensor").await;
    // A publish into the other tenant's topic is refused (v3: the publisher is disconnected).
    acme_sensor
        .client
        .publish("m/acme/c/telemetry/x", v4::QoS::AtLeastOnce, false, "acme")
        .await
        .expect("queued");
    globex_sensor
        .client
        .publish(
            "m/globex/c/telemetry/x",
            v4::QoS::AtLeastOnce,
            false,
            "globex",
        )
        .await
        .expect("queued");
    let a = acme.next_publish(WAIT).await.expect("acme delivery");
    assert_eq!(&a.payload[..], b"acme");
    let g = globex.next_publish(WAIT).await.expect("globex delivery");
    assert_eq!(&g.payload[..], b"globex");
    assert!(acme.next_publish(QUIET).await.is_none());
    assert!(globex.next_publish(QUIET).await.is_none());
    // Both sessions with the same thing name and client id are still alive: no takeover
    // across tenants.
    acme.client
        .subscribe("m/acme/c/commands/#", v4::QoS::AtMostOnce)
        .await
        .expect("queued");
    assert!(matches!(
        acme.next(WAIT).await,
        Some(Ok(v4::Packet::SubAck(_)))
    ));
    globex
        .client
        .subscribe("m/globex/c/commands/#", v5::QoS::AtMostOnce)
        .await
        .expect("queued");
    assert!(matches!(
        globex.next(WAIT).await,
        Some(Ok(v5::Packet::SubAck(_)))
    ));
}

#[tokio::test]
async fn a_cross_tenant_publish_never_arrives_and_disconnects_a_v3_publisher() {
    let fx = Fixture::start().await;
    let mut globex = v4::connect(fx.addr, "globex", "reader", "r").await;
    globex
        .subscribe("m/globex/c/telemetry/#", v4::QoS::AtMostOnce)
        .await;
    let mut acme_sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    acme_sensor
        .client
        .publish(
            "m/globex/c/telemetry/x",
            v4::QoS::AtLeastOnce,
            false,
            "intruder",
        )
        .await
        .expect("queued");
    assert!(acme_sensor.closed_within(WAIT).await.is_some());
    assert!(globex.next_publish(QUIET).await.is_none());
}

#[tokio::test]
async fn the_same_client_id_takes_over_only_its_own_things_session() {
    let fx = Fixture::start().await;
    let mut first = v5::connect(fx.addr, "acme", "reader", "dup").await;
    // Another thing with the same client id does not touch it.
    let _other = v5::connect(fx.addr, "acme", "sensor", "dup").await;
    assert!(first.closed_within(QUIET).await.is_none());
    // The same thing and id: the old session is told and closed.
    let mut second = v5::connect(fx.addr, "acme", "reader", "dup").await;
    let closed = first.closed_within(WAIT).await.expect("old session closed");
    assert!(closed.contains("SessionTakenOver"), "{closed}");
    assert_eq!(
        second
            .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
            .await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
    );
}
