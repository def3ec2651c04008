use super::*;
use crate::router::{MessageId, MessageProps, Protocol, Publisher, PublisherKind};

#[test]
fn a_router_id_gives_its_session_key_back() {
    let key = SessionKey {
        tenant: "acme".into(),
        kind: PublisherKind::User,
        subject: "a:b/c".into(),
        client_id: "x+#$%:y é".into(),
    };
    assert_eq!(key_of(&key.router_id()), Some(key));
    assert_eq!(key_of("acme:robot:x:y"), None, "an unknown kind");
    assert_eq!(key_of("acme:thing:x"), None, "a part missing");
    assert_eq!(key_of("acme:thing:x:%G1"), None, "bad percent-encoding");
}

#[test]
fn a_queued_message_is_written_and_read_as_it_was() {
    let message = Message {
        stored: false,
        topic: "m/acme/c/telemetry/status".into(),
        payload: bytes::Bytes::from_static(&[0, 159, 146, 150]),
        qos: 1,
        props: Some(Box::new(MessageProps {
            content_type: Some("text/plain".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("k".into(), "v".into())],
            ..MessageProps::default()
        })),
        retain: true,
        origin: Some(7),
        publisher: Some(Publisher {
            kind: PublisherKind::Thing,
            name: "sensor-1".into(),
        }),
        protocol: Protocol::Http,
        created_ns: 1_700_000_000_123_456_789,
        id: MessageId::new(1_700_000_000_123_456_789),
    };
    let json = serde_json::to_vec(&FileMessage::of(&message)).expect("encodes");
    let back: FileMessage = serde_json::from_slice(&json).expect("decodes");
    let back = back.into_message().expect("a message");
    // The publishing connection does not outlive the process: no-local has nothing to match.
    assert_eq!(
        back,
        Message {
            origin: None,
            ..message
        }
    );
}

#[test]
fn a_file_of_another_version_or_unreadable_is_moved_aside() {
    let dir = std::env::temp_dir().join(format!("fleetward-sfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("sessions.json");
    assert!(read(&path).is_none(), "no file: no sessions");
    for text in [
        &b"{\"version\":99,\"saved_at_ms\":0,\"sessions\":[]}"[..],
        b"\xff\x00",
    ] {
        std::fs::write(&path, text).expect("write");
        assert!(read(&path).is_none());
        assert!(!path.exists(), "moved aside");
        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
            std::fs::remove_file(e.path()).expect("rm");
        }
    }
    write_atomically(&path, b"{\"version\":1,\"saved_at_ms\":0,\"sessions\":[]}").expect("write");
    assert!(read(&path).is_some_and(|f| f.sessions.is_empty() && f.wills.is_empty()));
    std::fs::remove_dir_all(dir).ok();
}
