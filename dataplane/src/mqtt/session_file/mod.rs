//! Persistent sessions across a restart of `fleetward start` (the single binary, no NATS): at
//! shutdown, once sessions have ended, every saved session (both halves: the front-end's and
//! what the router queued for it) and every waiting will is written to a file under the state
//! directory; at the next start, before the listeners accept, they are made again and the file
//! is removed. A file that cannot be read is logged and moved aside, never fatal.

mod format;

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleetward_policy::{Subject, SubjectKind};
use foldhash::{HashMap, HashSet};

use self::format::{FileInflight, FileKey, FileMessage, FileSession, FileSub, FileWill, Kind};
use self::format::{SessionFile, VERSION};
use super::broker::Broker;
use super::pending_wills::Will;
use super::saved::SavedSession;
use super::session::{expire_later, publish_will};
use super::subs::Subs;
use crate::router::{Message, Router, RouterLink, SessionKey, SessionMode};

/// How long the router is given to hand over one more queued message before a saved
/// session's queue is taken as empty (after asking it to catch up, three times).
const QUIET: Duration = Duration::from_millis(25);
/// Sessions whose router queues are taken at once at shutdown.
const DRAINING: usize = 32;

/// What was written or made again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Persistent sessions.
    pub sessions: usize,
    /// Messages queued for them.
    pub messages: usize,
    /// Wills waiting out their delay.
    pub wills: usize,
    /// Sessions in the file that expired while the process was down (restore only).
    pub expired: usize,
}

impl<R: Router> Broker<R> {
    /// Writes every saved session and waiting will to `path` (atomically, mode 0600). Called
    /// once the live sessions have ended: a session still connected is not saved. Sessions
    /// written are taken out of the pod (what the router queued for them included): this is
    /// the last thing a stopping process does with them.
    pub(crate) async fn save_sessions(self: &Arc<Self>, path: &Path) -> anyhow::Result<Counts> {
        let now = Instant::now();
        let mut counts = Counts::default();
        // Held until the file is written: no client resumes a session being written.
        let mut taken = Vec::new();
        for id in self.sessions.ids() {
            let Some(key) = key_of(&id) else {
                continue;
            };
            let Some(registration) = self.registry.register_if_idle(id.clone()) else {
                continue;
            };
            let Some(saved) = self.sessions.take(&id) else {
                continue;
            };
            taken.push((key, saved, registration));
        }
        let max = self.config.max_offline_messages;
        let drained: Vec<_> = {
            use futures_util::StreamExt as _;
            futures_util::stream::iter(taken)
                .map(|(key, saved, registration)| async move {
                    // A session without subscriptions has nothing queued in the router.
                    let queued = if saved.subs.is_empty() {
                        VecDeque::new()
                    } else {
                        drain_router(&self.router, &key, max).await
                    };
                    (key, saved, registration, queued)
                })
                .buffer_unordered(DRAINING)
                .collect()
                .await
        };
        let mut sessions = Vec::with_capacity(drained.len());
        let mut registrations = Vec::with_capacity(drained.len());
        for (key, mut saved, registration, queued) in drained {
            registrations.push(registration);
            let Some(deadline) = saved.deadline else {
                continue;
            };
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                continue;
            }
            counts.sessions += 1;
            counts.messages += queued.len();
            sessions.push(file_session(&key, &mut saved, left, &queued));
        }
        let wills = self.kept_wills(now);
        counts.wills = wills.len();
        let file = SessionFile {
            version: VERSION,
            saved_at_ms: unix_ms(),
            sessions,
            wills,
        };
        let json = serde_json::to_vec(&file).context("encoding the saved sessions")?;
        write_atomically(path, &json)?;
        drop(registrations);
        Ok(counts)
    }

    /// The wills waiting now, as the file keeps them.
    fn kept_wills(&self, now: Instant) -> Vec<FileWill> {
        let mut wills = Vec::new();
        for (id, will) in self.pending_wills.kept() {
            let Some(key) = key_of(&id) else {
                continue;
            };
            wills.push(FileWill {
                key: file_key(&key),
                due_in_ms: millis(will.due.saturating_duration_since(now)),
                retain: will.retain,
                message: FileMessage::of(&will.message),
            });
        }
        wills
    }

    /// Makes the sessions and wills of the file at `path` again, then removes it; before the
    /// listeners accept. `queue_offline` gives the router what was queued for a session (it
    /// is delivered first when the client resumes). A missing file is no sessions; one that
    /// cannot be read is logged and moved aside.
    pub(crate) async fn restore_sessions(
        self: &Arc<Self>,
        path: &Path,
        queue_offline: impl Fn(&SessionKey, VecDeque<Message>),
    ) -> Counts {
        let mut counts = Counts::default();
        let Some(file) = read(path) else {
            return counts;
        };
        let down = Duration::from_millis(unix_ms().saturating_sub(file.saved_at_ms));
        for s in file.sessions {
            let left = Duration::from_millis(s.expires_in_ms).saturating_sub(down);
            if left.is_zero() {
                counts.expired += 1;
                continue;
            }
            if let Some(messages) = self.restore_one(s, left, &queue_offline).await {
                counts.sessions += 1;
                counts.messages += messages;
            }
        }
        for w in file.wills {
            let Some(message) = w.message.into_message() else {
                continue;
            };
            let (key, subject) = key_and_subject(&w.key);
            let delay = Duration::from_millis(w.due_in_ms).saturating_sub(down);
            let will = Will {
                message,
                retain: w.retain,
                delay,
            };
            // Due during the restart: it goes out now.
            publish_will(self.clone(), subject, key.router_id(), will);
            counts.wills += 1;
        }
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(file = %path.display(), error = %e, "could not remove the session file after restoring it; remove it, or the sessions are restored again at the next start");
        }
        counts
    }

    /// Makes one saved session of the file again, its queue given to `queue_offline`; how
    /// many queued messages it has, `None` if the router could not take it.
    async fn restore_one(
        self: &Arc<Self>,
        s: FileSession,
        left: Duration,
        queue_offline: &impl Fn(&SessionKey, VecDeque<Message>),
    ) -> Option<usize> {
        let (key, subject) = key_and_subject(&s.key);
        let id = key.router_id();
        // The router's half: subscribed again, so that what is published from now on
        // queues for it.
        match self.router.attach(&key, SessionMode::Persistent).await {
            Ok((mut link, _)) => {
                for sub in &s.subscriptions {
                    if let Err(e) = link.subscribe(&sub.router) {
                        tracing::warn!(client = %id, error = %e, "could not subscribe a restored session in the router");
                    }
                }
                link.taken_in().await;
                link.detach();
            }
            Err(e) => {
                tracing::warn!(client = %id, error = %e, "could not restore a saved session in the router; it is dropped");
                return None;
            }
        }
        let queued: VecDeque<Message> = s
            .queued
            .into_iter()
            .filter_map(FileMessage::into_message)
            .take(self.config.max_offline_messages)
            .collect();
        let messages = queued.len();
        queue_offline(&key, queued);
        let mut subs = Subs::default();
        for sub in s.subscriptions {
            subs.insert(sub.into_subscription());
        }
        let inflight: HashMap<_, _> = s.inflight.into_iter().map(FileInflight::into_out).collect();
        let qos2_in: HashSet<u16> = s.qos2_in.into_iter().collect();
        let saved = SavedSession::new(subs, inflight, qos2_in, s.next_pkid);
        let held = self.sessions.save(
            id,
            &subject.tenant,
            saved,
            self.config.max_saved_sessions_per_tenant,
        );
        // Its expiry keeps counting from where it was; a deleted subject or channel drops
        // it at the first snapshot, as for any saved session.
        expire_later(self.clone(), key, subject, held, left);
        Some(messages)
    }
}

/// What the router queued for a persistent session while its client was away, oldest first,
/// up to `max`: taken from a persistent attach until the router has nothing more for it.
async fn drain_router<R: Router>(router: &R, key: &SessionKey, max: usize) -> VecDeque<Message> {
    let mut out = VecDeque::new();
    let mut link = match router.attach(key, SessionMode::Persistent).await {
        Ok((link, _)) => link,
        Err(e) => {
            tracing::warn!(client = %key.router_id(), error = %e, "could not take a saved session's queue from the router; it is not written");
            return out;
        }
    };
    let mut quiet = 0;
    while out.len() < max {
        match tokio::time::timeout(QUIET, link.receive()).await {
            Ok(Ok(mut m)) => {
                m.origin = None;
                out.push_back(m);
                quiet = 0;
            }
            Ok(Err(_)) => break,
            Err(_) => {
                quiet += 1;
                if quiet == 3 {
                    break;
                }
                router.caught_up(Duration::from_secs(1)).await;
            }
        }
    }
    link.detach();
    out
}

/// The session file, decoded; `None` when there is none, or it cannot be read (then it is
/// moved aside, and why is logged).
fn read(path: &Path) -> Option<SessionFile> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "could not read the saved sessions; starting without them");
            move_aside(path);
            return None;
        }
    };
    match serde_json::from_slice::<SessionFile>(&bytes) {
        Ok(file) if file.version == VERSION => Some(file),
        Ok(file) => {
            tracing::error!(file = %path.display(), version = file.version, "the saved sessions are of another version; starting without them");
            move_aside(path);
            None
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "the saved sessions cannot be decoded; starting without them");
            move_aside(path);
            None
        }
    }
}

/// Renames an unreadable session file to `<name>.corrupt-<unix seconds>`, kept for a person
/// to look at; the next shutdown writes a new one.
fn move_aside(path: &Path) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{}", unix_ms() / 1000));
    let aside = PathBuf::from(aside);
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            tracing::warn!(file = %aside.display(), "moved the unreadable session file aside")
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "could not move the unreadable session file aside; remove it")
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory (mode 0600), so
/// that a crash leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("writing the saved sessions to {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing the saved sessions to {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// The session key of a router-side id (`SessionKey::router_id`, percent-encoded parts).
fn key_of(id: &str) -> Option<SessionKey> {
    let mut parts = id.splitn(4, ':');
    let (tenant, kind, name, client_id) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let kind = match kind {
        "thing" => crate::router::PublisherKind::Thing,
        "user" => crate::router::PublisherKind::User,
        _ => return None,
    };
    Some(SessionKey {
        tenant: decode(tenant)?,
        kind,
        subject: decode(name)?,
        client_id: decode(client_id)?,
    })
}

/// Undoes the router id's percent-encoding.
fn decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A saved session as the file keeps it, with `left` before it expires.
fn file_session(
    key: &SessionKey,
    saved: &mut SavedSession,
    left: Duration,
    queued: &VecDeque<Message>,
) -> FileSession {
    FileSession {
        key: file_key(key),
        expires_in_ms: millis(left),
        subscriptions: saved.subs.values_mut().map(|s| FileSub::of(s)).collect(),
        inflight: saved
            .inflight
            .iter()
            .map(|(pkid, (state, m))| FileInflight::of(*pkid, *state, m))
            .collect(),
        qos2_in: saved.qos2_in.iter().copied().collect(),
        next_pkid: saved.next_pkid,
        queued: queued.iter().map(FileMessage::of).collect(),
    }
}

fn file_key(key: &SessionKey) -> FileKey {
    FileKey {
        tenant: key.tenant.clone(),
        kind: key.kind.into(),
        name: key.subject.clone(),
        client_id: key.client_id.clone(),
    }
}

/// The session key, and the subject it belongs to (without the token epoch or certificate
/// it last connected with: a resume authenticates again).
fn key_and_subject(k: &FileKey) -> (SessionKey, Subject) {
    let subject = match k.kind {
        Kind::Thing => Subject::thing(k.tenant.clone(), k.name.clone()),
        Kind::User => Subject::user(k.tenant.clone(), k.name.clone()),
    };
    debug_assert!(matches!(
        (k.kind, subject.kind),
        (Kind::Thing, SubjectKind::Thing) | (Kind::User, SubjectKind::User)
    ));
    (SessionKey::of(&subject, k.client_id.clone()), subject)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    crate::router::now_ns() / 1_000_000
}

#[cfg(test)]
mod tests;
