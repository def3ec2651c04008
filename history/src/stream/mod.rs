//! The JetStream side of cluster mode: dataplanes publish the records of history channels to
//! the stream `FLEETWARD_HISTORY` ([`Publisher`]), and `fleetward writer` replicas store them
//! through one durable pull consumer ([`consume`]), acknowledging only after the commit.
//!
//! The stream is a work queue: a message leaves it when a writer acknowledges it, so its size
//! is the backlog, and `max_bytes` (discard new) bounds what it holds while PostgreSQL is
//! down. Publishes carry `Nats-Msg-Id` = the message id, so a retried publish is stored once
//! (within the duplicate window), and the store skips ids it has, so a redelivery is too.

mod consumer;
mod publisher;
pub mod wire;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

pub use self::consumer::{Backlog, ConsumerConfig, ConsumerStats, backlog, consume};
pub use self::publisher::{Publisher, PublisherConfig, PublisherStats};

/// The stream's name.
pub const STREAM: &str = "FLEETWARD_HISTORY";

/// The subjects the stream holds.
pub const SUBJECTS: &str = "fleetward.history.>";

/// The durable consumer every writer replica shares.
pub const DURABLE: &str = "fleetward-writer";

/// The default backlog limit: 1 GiB of records waiting for the store.
pub const DEFAULT_MAX_BACKLOG_BYTES: u64 = 1 << 30;

/// How the stream is made.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// The most bytes the stream holds; publishes past it are refused (and retried by the
    /// dataplane) until writers catch up.
    pub max_bytes: u64,
    /// How long JetStream remembers message ids to drop a retried publish (at least 2 min).
    pub duplicate_window: Duration,
    /// Replicas of the stream in a clustered JetStream (1 on a single server).
    pub replicas: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BACKLOG_BYTES,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

impl StreamConfig {
    fn to_nats(&self) -> stream::Config {
        stream::Config {
            name: STREAM.to_owned(),
            description: Some(
                "Fleetward: records of history channels waiting for fleetward writer".to_owned(),
            ),
            subjects: vec![SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::New,
            duplicate_window: self.duplicate_window.max(Duration::from_secs(120)),
            num_replicas: self.replicas.max(1),
            ..stream::Config::default()
        }
    }
}

/// Creates the stream, or brings an existing one's limits to `config` (a changed
/// `--max-backlog-bytes` takes effect on the next writer start).
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &StreamConfig,
) -> Result<stream::Stream, async_nats::Error> {
    let wanted = config.to_nats();
    let mut stream = js.get_or_create_stream(wanted.clone()).await?;
    let have = &stream.info().await?.config;
    if have.max_bytes != wanted.max_bytes
        || have.duplicate_window != wanted.duplicate_window
        || have.discard != wanted.discard
    {
        js.update_stream(wanted).await?;
    }
    Ok(stream)
}

/// The subject of a channel's records: `fleetward.history.<tenant>.<channel>`, each name
/// escaped as the bus escapes topic levels (BUS.md), so no name can add a token.
pub fn subject(tenant: &str, channel: &str) -> String {
    format!(
        "fleetward.history.{}.{}",
        fleetward_process::nats::escape_token(tenant),
        fleetward_process::nats::escape_token(channel)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_plain_names_and_escape_the_rest() {
        assert_eq!(subject("acme", "temp-1"), "fleetward.history.acme.temp-1");
        assert_eq!(subject("a.b", "*"), "fleetward.history.a=2Eb.=2A");
        assert_eq!(subject("", ">"), "fleetward.history.=.=3E");
    }

    #[test]
    fn the_stream_is_a_bounded_work_queue_that_refuses_new_messages_when_full() {
        let c = StreamConfig {
            max_bytes: 1000,
            duplicate_window: Duration::from_secs(1),
            replicas: 0,
        }
        .to_nats();
        assert_eq!(c.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(c.discard, stream::DiscardPolicy::New);
        assert_eq!(c.storage, stream::StorageType::File);
        assert_eq!(c.max_bytes, 1000);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.num_replicas, 1);
    }
}
