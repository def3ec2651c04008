//! The bus router against a recording router and a recording bus.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;

#[derive(Default)]
struct Recorded {
    published: Vec<String>,
    interest: Vec<(ChannelKey, BTreeSet<String>)>,
}

#[derive(Default, Clone)]
struct RecordingBus(Arc<Mutex<Recorded>>);

impl Bus for RecordingBus {
    fn publish(&self, message: &Message) {
        let topic = String::from_utf8_lossy(&message.topic).into_owned();
        self.0.lock().published.push(topic);
    }
    fn set_interest(&self, channel: ChannelKey, subjects: BTreeSet<String>) {
        self.0.lock().interest.push((channel, subjects));
    }
}

/// A router that keeps what it was given; every attach resumes iff `resume` is set.
#[derive(Default)]
struct FakeRouter {
    published: Mutex<Vec<String>>,
    resume: std::sync::atomic::AtomicBool,
}

struct FakeLink;

impl RouterLink for FakeLink {
    fn subscribe(&mut self, _: &str) -> Result<(), RouterError> {
        Ok(())
    }
    fn unsubscribe(&mut self, _: &str) -> Result<(), RouterError> {
        Ok(())
    }
    fn publish(&mut self, _: Message) -> Result<(), RouterError> {
        Ok(())
    }
    async fn receive(&mut self) -> Result<Message, RouterError> {
        std::future::pending().await
    }
    fn detach(self) {}
}

impl Router for FakeRouter {
    type Link = FakeLink;
    async fn attach(
        &self,
        _: &SessionKey,
        _: SessionMode,
    ) -> Result<(FakeLink, bool), RouterError> {
        Ok((
            FakeLink,
            self.resume.load(std::sync::atomic::Ordering::SeqCst),
        ))
    }
    fn publish(&self, message: Message) -> Result<(), RouterError> {
        let topic = String::from_utf8_lossy(&message.topic).into_owned();
        self.published.lock().push(topic);
        Ok(())
    }
    fn is_alive(&self) -> bool {
        true
    }
}

fn msg(topic: &'static str) -> Message {
    Message {
        stored: false,
        id: crate::router::MessageId::floor(1_700_000_000_000_000_000),
        topic: Bytes::from_static(topic.as_bytes()),
        payload: Bytes::from_static(b"p"),
        qos: 0,
        props: None,
        retain: false,
        origin: None,
        publisher: None,
        protocol: crate::router::Protocol::Unspecified,
        created_ns: 0,
    }
}

fn key(c: &str) -> SessionKey {
    SessionKey {
        tenant: "acme".into(),
        kind: crate::router::PublisherKind::Thing,
        subject: "s".into(),
        client_id: c.into(),
    }
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn setup() -> (Arc<FakeRouter>, RecordingBus, BusRouter<FakeRouter>) {
    let inner = Arc::new(FakeRouter::default());
    let bus = RecordingBus::default();
    let router = BusRouter::new(inner.clone(), Arc::new(bus.clone()));
    (inner, bus, router)
}

#[tokio::test]
async fn local_publishes_reach_the_bus_and_inbound_ones_only_the_router() {
    let (inner, bus, router) = setup();
    router.publish(msg("m/acme/c/x/a")).expect("routed");
    let (mut link, _) = router
        .attach(&key("c"), SessionMode::Clean)
        .await
        .expect("attach");
    link.publish(msg("m/acme/c/x/b")).expect("routed");
    (BusRouter::deliver_to(inner.clone()))(msg("m/acme/c/x/remote"));
    assert_eq!(bus.0.lock().published, ["m/acme/c/x/a", "m/acme/c/x/b"]);
    assert_eq!(
        *inner.published.lock(),
        ["m/acme/c/x/a", "m/acme/c/x/remote"],
        "the link published through its own inner link"
    );
}

#[tokio::test]
async fn interest_is_counted_per_filter_and_released_with_the_last() {
    let (_, bus, router) = setup();
    let (mut a, _) = router
        .attach(&key("a"), SessionMode::Clean)
        .await
        .expect("a");
    let (mut b, _) = router
        .attach(&key("b"), SessionMode::Clean)
        .await
        .expect("b");
    a.subscribe("m/acme/c/x/#").expect("sub");
    // Renewing the same filter on the same session counts once.
    a.subscribe("m/acme/c/x/#").expect("sub");
    b.subscribe("m/acme/c/x/#").expect("sub");
    assert_eq!(router.subjects(), set(&["m.acme.c.x", "m.acme.c.x.>"]));
    assert_eq!(
        bus.0.lock().interest.len(),
        1,
        "one change for three subscribes"
    );
    a.unsubscribe("m/acme/c/x/#").expect("unsub");
    assert_eq!(bus.0.lock().interest.len(), 1, "b still needs it");
    b.detach();
    let last = bus.0.lock().interest.last().cloned();
    assert_eq!(
        last,
        Some((("acme".into(), "x".into()), BTreeSet::new())),
        "the last subscriber gone, the channel is dropped"
    );
    assert!(router.subjects().is_empty());
}

#[tokio::test]
async fn overlapping_filters_take_the_whole_channel_and_give_it_back() {
    let (_, _, router) = setup();
    let (mut a, _) = router
        .attach(&key("a"), SessionMode::Clean)
        .await
        .expect("a");
    a.subscribe("m/acme/c/x/s1").expect("sub");
    a.subscribe("m/other/c/x/s1").expect("sub");
    assert_eq!(router.subjects(), set(&["m.acme.c.x.s1", "m.other.c.x.s1"]));
    a.subscribe("$share/g/m/acme/c/x/+").expect("sub");
    assert_eq!(
        router.subjects(),
        set(&["m.acme.c.x", "m.acme.c.x.>", "m.other.c.x.s1"])
    );
    a.unsubscribe("$share/g/m/acme/c/x/+").expect("unsub");
    assert_eq!(router.subjects(), set(&["m.acme.c.x.s1", "m.other.c.x.s1"]));
    // Not ours: no interest, and no panic.
    a.subscribe("$SYS/#").expect("sub");
    assert_eq!(router.subjects().len(), 2);
}

#[tokio::test]
async fn a_persistent_session_keeps_its_interest_until_a_clean_attach() {
    let (inner, _, router) = setup();
    let (mut p, _) = router
        .attach(&key("p"), SessionMode::Persistent)
        .await
        .expect("p");
    p.subscribe("m/acme/c/x").expect("sub");
    p.detach();
    assert_eq!(router.subjects(), set(&["m.acme.c.x"]), "kept while away");
    inner
        .resume
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (p, present) = router
        .attach(&key("p"), SessionMode::Persistent)
        .await
        .expect("p");
    assert!(present);
    assert_eq!(router.subjects(), set(&["m.acme.c.x"]), "resumed");
    p.detach();
    inner
        .resume
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Expiry clears the session with a clean attach.
    let (c, _) = router
        .attach(&key("p"), SessionMode::Clean)
        .await
        .expect("clean");
    assert!(router.subjects().is_empty());
    c.detach();
}
