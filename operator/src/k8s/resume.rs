//! A restart that does not list. With a state directory (`--state-dir`), the operator saves
//! what its watches fed the index and the statuses the API server shows, with the
//! resourceVersion up to which each kind's watch events are applied. At a start that finds the
//! file, it restores them, counts those kinds as listed (so it serves at once), and resumes
//! each kind's watch from its resourceVersion: the API server sends what changed since,
//! deletions included ([`super::watch`]). Listing 100k objects takes the API server 8–11 s on
//! a two-core machine, whatever the operator does; a restart that resumes skips it.
//!
//! Where the API server no longer has the history since (410 Gone: its watch cache keeps a
//! bounded window of each kind's events, and a restarted API server starts a new one), that
//! kind is listed, as at a fresh start, and what the list no longer has is forgotten.
//!
//! Secrets are not saved: their data are credentials, which the operator does not write to
//! disk. Each claimed namespace's Secrets are listed at every start.
//!
//! The file is consistent without a lock across its parts: a kind's resourceVersion is read
//! before its objects and only advances once an event is applied and recorded, so every event
//! up to it is in the file; an event after it that is in the file too is sent again on resume
//! and applied again, which changes nothing. It is written again after the index or the shown
//! statuses change, spaced so that saving takes a tenth of the time (at most [`MAX_PAUSE`]
//! apart), and once more when the operator stops.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::observed::{Shown, WATCHED_KINDS, revision};
use super::watch::Feed;
use crate::index::{Kind, Object, ObjectKey};

/// The file's format; a file of another is not read (the kinds are listed instead).
const FORMAT: u32 = 1;
/// The file's name in the state directory.
const FILE: &str = "operator-state.jsonl";
/// Objects copied from the index per read lock while saving.
const CHUNK: usize = 1024;
/// The shortest wait between two saves.
const MIN_PAUSE: Duration = Duration::from_secs(5);
/// The longest wait between two saves. A large state is saved less often rather than taking
/// more than a tenth of the time: at 330k objects a save took 9–15 s. A restart after a
/// crash that finds its history gone from the API server lists, as a start without the file
/// does; a stop (SIGTERM) saves the newest state.
pub const MAX_PAUSE: Duration = Duration::from_secs(120);

/// Where each restored kind's watch resumes: its resourceVersion.
pub type Resume = BTreeMap<Kind, String>;

/// The file's first line.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    /// The kinds whose objects follow, each with the resourceVersion they are known up to.
    versions: BTreeMap<Kind, String>,
}

/// One object, as saved.
#[derive(Serialize)]
struct SavedRef<'a> {
    key: &'a ObjectKey,
    shown: Option<&'a Shown>,
    object: &'a Object,
}

/// One object, as read back.
#[derive(Deserialize)]
struct Saved {
    key: ObjectKey,
    shown: Option<Shown>,
    object: Object,
}

/// The state file in `dir`.
pub fn file(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// A hidden file in `dir` beside the state file, named for what writes it (`tmp`, `seed`):
/// written whole, then renamed onto [`file`].
pub fn scratch(dir: &Path, writer: &str) -> PathBuf {
    dir.join(format!(".{FILE}.{writer}"))
}

/// Writes `feed`'s state into `dir`, replacing the file whole; returns the objects written.
/// Only kinds with a resourceVersion are saved: the others are listed at a restart anyway.
pub fn save(dir: &Path, feed: &Feed) -> io::Result<usize> {
    // One save at a time: the last one, at shutdown, may start while an aborted saver's
    // blocking write is still under way, and both write the same temporary file.
    static SAVING: Mutex<()> = Mutex::new(());
    let _saving = SAVING.lock().unwrap_or_else(PoisonError::into_inner);
    let versions: BTreeMap<Kind, u64> = WATCHED_KINDS
        .iter()
        .filter_map(|&kind| Some((kind, feed.observed.version(kind)?)))
        .collect();
    let tmp = scratch(dir, "tmp");
    let mut out = BufWriter::new(File::create(&tmp)?);
    let header = Header {
        format: FORMAT,
        versions: versions.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let mut count = 0;
    for &kind in versions.keys() {
        let keys = feed.index.read().keys_of(kind);
        for chunk in keys.chunks(CHUNK) {
            let objects: Vec<(&ObjectKey, Object)> = {
                let index = feed.index.read();
                chunk
                    .iter()
                    .filter_map(|key| Some((key, index.object(key)?)))
                    .collect()
            };
            let shown: Vec<Option<Shown>> = feed
                .observed
                .with_objects(|o| objects.iter().map(|(key, _)| o.get(key)).collect());
            for ((key, object), shown) in objects.iter().zip(&shown) {
                let saved = SavedRef {
                    key,
                    shown: shown.as_ref(),
                    object,
                };
                serde_json::to_writer(&mut out, &saved)?;
                out.write_all(b"\n")?;
                count += 1;
            }
        }
    }
    // Not synced to disk: at 330k objects the sync alone took most of a 9 s save. A file
    // torn by a power loss does not read whole, and is then listed instead.
    out.into_inner().map_err(io::IntoInnerError::into_error)?;
    fs::rename(&tmp, dir.join(FILE))?;
    Ok(count)
}

/// Restores the state saved in `dir` into `feed`; returns where each restored kind's watch
/// resumes. Nothing when there is no file; when it cannot be read whole, nothing either (what
/// was restored of it is reconciled by the lists that follow).
pub fn restore(dir: &Path, feed: &Feed) -> Resume {
    let started = Instant::now();
    match read(dir, feed) {
        Ok(Some((resume, count))) => {
            tracing::info!(
                objects = count,
                kinds = ?resume.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                took_ms = started.elapsed().as_millis(),
                "restored the saved state; resuming those kinds' watches from it"
            );
            resume
        }
        Ok(None) => {
            tracing::info!(dir = %dir.display(), "no saved state; listing every kind");
            Resume::new()
        }
        Err(e) => {
            tracing::warn!(
                file = %dir.join(FILE).display(),
                error = %e,
                "the saved state cannot be read; listing every kind"
            );
            Resume::new()
        }
    }
}

fn read(dir: &Path, feed: &Feed) -> io::Result<Option<(Resume, usize)>> {
    let file = match File::open(dir.join(FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        file => file?,
    };
    let mut lines = BufReader::new(file).lines();
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    let header: Header = serde_json::from_str(&first?)?;
    if header.format != FORMAT {
        return Err(io::Error::other(format!(
            "its format is {}, this operator reads {FORMAT}",
            header.format
        )));
    }
    let mut count = 0;
    for line in lines {
        let Saved { key, shown, object } = serde_json::from_str(&line?)?;
        if !header.versions.contains_key(&key.kind) {
            return Err(io::Error::other(format!(
                "{key} is of a kind the file has no resourceVersion for"
            )));
        }
        if let Object::Tenant(t) = &object {
            feed.observed.claim(&key.name, &t.namespace);
        }
        feed.index.update_quietly(|idx| idx.apply(object));
        if let Some(shown) = shown {
            feed.observed.record(key, shown);
        }
        count += 1;
    }
    for (kind, version) in &header.versions {
        if let Some(version) = revision(Some(version)) {
            feed.observed.seen_version(*kind, version);
        }
        feed.observed.listed(*kind);
    }
    feed.index.wake();
    Ok(Some((header.versions, count)))
}

/// How long to wait after a save that took `took`: nine times as long, so saving takes a
/// tenth of the time, within [`MIN_PAUSE`, `MAX_PAUSE`].
fn pause_after(took: Duration) -> Duration {
    took.saturating_mul(9).clamp(MIN_PAUSE, MAX_PAUSE)
}

/// Saves `feed`'s state into `dir` whenever the index or the shown statuses changed, spaced
/// (see [`pause_after`]); the first save waits [`MIN_PAUSE`], so a start is not slowed by
/// one. Runs until the task is dropped.
pub async fn keep_saved(dir: PathBuf, feed: Feed) -> &'static str {
    const NAME: &str = "state saver";
    let mut index = feed.index.subscribe();
    let mut observed = feed.observed.subscribe();
    let mut pause = MIN_PAUSE;
    loop {
        tokio::time::sleep(pause).await;
        tokio::select! {
            changed = index.changed() => if changed.is_err() { return NAME },
            changed = observed.changed() => if changed.is_err() { return NAME },
        }
        index.borrow_and_update();
        observed.borrow_and_update();
        pause = save_in_background(&dir, &feed)
            .await
            .map_or(MAX_PAUSE, pause_after);
    }
}

/// Saves on a blocking thread and logs the outcome; how long the save took when it worked.
pub async fn save_in_background(dir: &Path, feed: &Feed) -> Option<Duration> {
    let (dir, feed) = (dir.to_owned(), feed.clone());
    let started = Instant::now();
    let saved = tokio::task::spawn_blocking(move || save(&dir, &feed)).await;
    let took = started.elapsed();
    match saved {
        Ok(Ok(count)) => {
            tracing::debug!(
                objects = count,
                took_ms = took.as_millis(),
                "saved the state"
            );
            Some(took)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot save the state; a restart lists what it cannot resume");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "the state saver failed");
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
