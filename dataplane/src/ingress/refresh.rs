//! Refresh-token families: one per sign-in, rotated on every use, revoked whole on a replay.
//!
//! A refresh token is `<family>.<secret>`, both random. The store keeps, per family, the digest
//! of the one secret that may be used next. Presenting any other secret of the family (an old
//! one, replayed by whoever copied it) revokes the family: neither the thief nor the user can
//! refresh again, and the user signs in anew. Rotation is a compare-and-set on the family's
//! revision, so two pods racing on one token cannot both win; the loser counts as a replay.
//!
//! Single pod (and `fleetward start`): the families live in memory. Several pods: in a NATS
//! JetStream key-value bucket, so a token rotated on one pod is known used on every other.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// A sign-in's refresh state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Family {
    /// The user's tenant.
    pub tenant: String,
    /// The user.
    pub user: String,
    /// The user's token epoch at sign-in; a later epoch ends the family.
    pub epoch: u64,
    /// Hex SHA-256 of the one secret that may be used next.
    pub current: String,
    /// When the current secret stops working, in seconds since the Unix epoch.
    pub expires_unix: u64,
    /// Set once a replay was seen: nothing of the family works any more.
    #[serde(default)]
    pub revoked: bool,
}

/// A family with the revision it was read at, for compare-and-set.
#[derive(Clone, Debug)]
pub struct Versioned {
    /// The family.
    pub family: Family,
    /// Its revision in the store.
    pub revision: u64,
    /// Kept in this pod's memory because NATS JetStream was unreachable at sign-in.
    pub local: bool,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer changed the family since it was read.
    #[error("the family changed since it was read")]
    Conflict,
    /// The backing store is unreachable or failed.
    #[error("the refresh-token store is unavailable: {0}")]
    Unavailable(String),
}

/// Where families are kept: memory on a lone pod, NATS when pods share a bus.
pub enum RefreshStore {
    /// This process's memory.
    Memory(MemoryStore),
    /// A JetStream key-value bucket (boxed: the opened bucket's handle is large).
    Nats(Box<NatsStore>),
}

impl RefreshStore {
    /// NATS when the dataplane has a bus, memory otherwise.
    pub fn for_bus(client: Option<async_nats::Client>, max_age: Duration) -> Self {
        match client {
            Some(c) => Self::Nats(Box::new(NatsStore::new(c, "fleetward_refresh", max_age))),
            None => Self::Memory(MemoryStore::default()),
        }
    }

    /// Stores a new family under `id`.
    pub async fn create(&self, id: &str, family: &Family) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => m.create(id, family),
            Self::Nats(n) => n.create(id, family).await,
        }
    }

    /// Reads a family.
    pub async fn get(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        match self {
            Self::Memory(m) => m.get(id),
            Self::Nats(n) => n.get(id).await,
        }
    }

    /// Replaces a family, read by [`RefreshStore::get`], if it is still at its revision.
    pub async fn update(
        &self,
        id: &str,
        family: &Family,
        read: &Versioned,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => m.update(id, family, read.revision),
            Self::Nats(n) if read.local => n.fallback.update(id, family, read.revision),
            Self::Nats(n) => n.update(id, family, read.revision).await,
        }
    }
}

/// A new refresh token: the family id and secret, and the token the client holds.
pub struct NewToken {
    /// The token as handed to the client: `<family>.<secret>`.
    pub token: String,
    /// Hex SHA-256 of the secret.
    pub digest: String,
}

/// A random secret for `family`, as a token and its digest.
pub fn new_token(family: &str) -> NewToken {
    let secret = random_b64(32);
    NewToken {
        token: format!("{family}.{secret}"),
        digest: digest(&secret),
    }
}

/// A random family id.
pub fn new_family_id() -> String {
    random_b64(16)
}

/// Splits a presented token into family id and secret; `None` when it is not one of ours.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (family, secret) = token.split_once('.')?;
    let ok = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (ok(family, 22) && ok(secret, 43)).then_some((family, secret))
}

/// Hex SHA-256 of a secret.
pub fn digest(secret: &str) -> String {
    use std::fmt::Write as _;
    Sha256::digest(secret.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source");
    URL_SAFE_NO_PAD.encode(buf)
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Families in this process's memory; expired ones are dropped as new ones arrive.
#[derive(Default)]
pub struct MemoryStore {
    families: Mutex<HashMap<String, Versioned>>,
}

impl MemoryStore {
    fn create(&self, id: &str, family: &Family) -> Result<(), StoreError> {
        let mut map = self.families.lock();
        if map.len() >= 1024 && map.len().is_power_of_two() {
            let now = unix(SystemTime::now());
            map.retain(|_, v| v.family.expires_unix > now);
        }
        map.insert(
            id.to_owned(),
            Versioned {
                family: family.clone(),
                revision: 1,
                local: true,
            },
        );
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.families.lock().get(id).cloned())
    }

    fn update(&self, id: &str, family: &Family, revision: u64) -> Result<(), StoreError> {
        let mut map = self.families.lock();
        match map.get_mut(id) {
            Some(v) if v.revision == revision => {
                v.family = family.clone();
                v.revision += 1;
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }
}

/// Families in a NATS JetStream key-value bucket, shared by every pod. While JetStream is
/// unreachable (or the server runs without it), new families are kept in this pod's memory
/// instead: sign-in keeps working, and such a refresh token is refused on the other pods (its
/// family is unknown there), which costs the user a new sign-in, never a replay.
pub struct NatsStore {
    client: async_nats::Client,
    bucket: String,
    max_age: Duration,
    store: OnceCell<kv::Store>,
    fallback: MemoryStore,
    warned: std::sync::atomic::AtomicBool,
}

impl NatsStore {
    /// A store in `bucket`; entries older than `max_age` since their last write expire.
    pub fn new(client: async_nats::Client, bucket: impl Into<String>, max_age: Duration) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            max_age,
            store: OnceCell::new(),
            fallback: MemoryStore::default(),
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn store(&self) -> Result<&kv::Store, StoreError> {
        self.store
            .get_or_try_init(|| async {
                let js = jetstream::new(self.client.clone());
                if let Ok(s) = js.get_key_value(self.bucket.clone()).await {
                    return Ok(s);
                }
                crate::bus::nats::create_bucket(
                    &js,
                    &self.bucket,
                    "Fleetward refresh-token families",
                    self.max_age,
                )
                .await
                .map_err(StoreError::Unavailable)
            })
            .await
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl NatsStore {
    async fn create(&self, id: &str, family: &Family) -> Result<(), StoreError> {
        let value = serde_json::to_vec(family).map_err(unavailable)?;
        let created = match self.store().await {
            Ok(store) => store.create(id, value.into()).await.map_err(unavailable),
            Err(e) => Err(e),
        };
        match created {
            Ok(_) => Ok(()),
            Err(e) => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(error = %e, "refresh tokens are kept per pod until NATS JetStream is reachable (run nats-server with -js)");
                }
                self.fallback.create(id, family)
            }
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        if let Some(local) = self.fallback.get(id)? {
            return Ok(Some(local));
        }
        let entry = self.store().await?.entry(id).await.map_err(unavailable)?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let family = serde_json::from_slice(&entry.value).map_err(unavailable)?;
        Ok(Some(Versioned {
            family,
            revision: entry.revision,
            local: false,
        }))
    }

    async fn update(&self, id: &str, family: &Family, revision: u64) -> Result<(), StoreError> {
        let value = serde_json::to_vec(family).map_err(unavailable)?;
        match self.store().await?.update(id, value.into(), revision).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_back_and_foreign_ones_do_not() {
        let id = new_family_id();
        let t = new_token(&id);
        let (family, secret) = split(&t.token).expect("ours");
        assert_eq!(family, id);
        assert_eq!(digest(secret), t.digest);
        for bad in [
            "",
            "a.b",
            "x",
            &format!("{id}.short"),
            &format!("{id}.{}", "é".repeat(43)),
        ] {
            assert!(split(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn memory_updates_are_compare_and_set() {
        let store = RefreshStore::Memory(MemoryStore::default());
        let f = Family {
            tenant: "acme".into(),
            user: "ann".into(),
            epoch: 0,
            current: "d1".into(),
            expires_unix: u64::MAX,
            revoked: false,
        };
        store.create("f", &f).await.expect("created");
        let read = store.get("f").await.expect("ok").expect("present");
        let next = Family {
            current: "d2".into(),
            ..f.clone()
        };
        store.update("f", &next, &read).await.expect("first wins");
        assert!(matches!(
            store.update("f", &f, &read).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            store.get("f").await.expect("ok").expect("present").family,
            next
        );
        assert!(store.get("g").await.expect("ok").is_none());
    }
}
