//! Messages queued for persistent sessions before a restart, handed back by the session file
//! (`mqtt/session_file.rs`): the next persistent attach of the session's id takes them, and its
//! link delivers them before anything the router queued since, in order.

use std::collections::VecDeque;

use foldhash::HashMap;
use parking_lot::Mutex;

use super::Message;

/// Queues by router-side id, until a link takes them.
#[derive(Default)]
pub(super) struct OfflineQueues(Mutex<HashMap<String, VecDeque<Message>>>);

impl OfflineQueues {
    /// Keeps `messages` for the id's next persistent attach; appended to what it has already.
    pub(super) fn put(&self, id: &str, mut messages: VecDeque<Message>) {
        if messages.is_empty() {
            return;
        }
        let mut queues = self.0.lock();
        match queues.get_mut(id) {
            Some(queue) => queue.append(&mut messages),
            None => {
                queues.insert(id.to_owned(), messages);
            }
        }
    }

    /// What waits for the id, taken out (empty if nothing does).
    pub(super) fn take(&self, id: &str) -> VecDeque<Message> {
        self.0.lock().remove(id).unwrap_or_default()
    }

    /// Messages kept, across ids.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        MessageId, Protocol, PublisherKind, Router, RouterLink, RumqttdConfig, RumqttdRouter,
        SessionKey, SessionMode,
    };
    use super::*;

    fn message(n: u8) -> Message {
        Message {
            stored: false,
            topic: "m/t/c/ch/x".into(),
            payload: vec![n].into(),
            qos: 1,
            props: None,
            retain: false,
            origin: None,
            publisher: None,
            protocol: Protocol::Mqtt,
            created_ns: 1,
            id: MessageId::floor(1),
        }
    }

    #[tokio::test]
    async fn a_persistent_attach_delivers_what_was_queued_and_a_clean_one_drops_it() {
        let router = RumqttdRouter::start(&RumqttdConfig::default()).expect("router");
        let key = SessionKey {
            tenant: "t".into(),
            kind: PublisherKind::Thing,
            subject: "s".into(),
            client_id: "c".into(),
        };
        router.queue_offline(&key, (1..=3).map(message).collect());
        let (mut link, _) = router
            .attach(&key, SessionMode::Persistent)
            .await
            .expect("attach");
        assert_eq!(router.offline.len(), 0, "the link holds them now");
        let first = link.receive().await.expect("queued");
        assert_eq!(first.payload.as_ref(), [1]);
        link.detach();
        // Not delivered yet: kept for the next attach, in order.
        assert_eq!(router.offline.len(), 2);
        let (mut link, _) = router
            .attach(&key, SessionMode::Persistent)
            .await
            .expect("attach");
        let next = link.try_receive().expect("queued").expect("a message");
        assert_eq!(next.payload.as_ref(), [2]);
        link.detach();
        let (link, _) = router
            .attach(&key, SessionMode::Clean)
            .await
            .expect("attach");
        link.detach();
        assert_eq!(router.offline.len(), 0, "a clean attach starts empty");
    }
}
