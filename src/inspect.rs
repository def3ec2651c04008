//! `fleetward credentials`, `fleetward can-i` and `fleetward status`: answers about a manifest
//! directory (or a cluster) for people and scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use fleetward_operator::directory::KeyStore;
use fleetward_operator::index::{Index, is_key_entry};
use fleetward_operator::resource::Resource;
use fleetward_policy::{
    Action, AllowReason, Decision, KeyDigest, Snapshot, Subject, TopicLimits, deny_text,
    parse_filter, parse_topic_name,
};
use serde::{Deserialize, Serialize};

use crate::local::{DEFAULT_MANIFESTS, DEFAULT_STATE_DIR, Local, StatusReport};

/// Prints a line to stdout; a closed pipe (`| head`) ends the output quietly instead of
/// panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Where to read objects from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The manifest directory (as given to `fleetward start`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_MANIFESTS, env = "FLEETWARD_MANIFESTS")]
    pub manifests: PathBuf,
    /// The state directory (as given to `fleetward start`), where generated keys are kept and
    /// a running `start` records where `can-i` asks it.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "FLEETWARD_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Read the cluster of the current kubeconfig instead of a manifest directory.
    #[arg(long, conflicts_with_all = ["manifests", "state_dir"])]
    pub cluster: bool,
}

/// `fleetward credentials` flags.
#[derive(Debug, Args)]
pub struct CredentialsArgs {
    /// The thing, as `<tenant>/<thing>`.
    #[arg(value_name = "TENANT/THING")]
    pub thing: String,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// The two questions `can-i` answers.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
}

/// `fleetward can-i` flags.
#[derive(Debug, Args)]
pub struct CanIArgs {
    /// The subject, as `<tenant>/<thing>` or `<tenant>/<user>`.
    #[arg(value_name = "TENANT/SUBJECT")]
    pub subject: String,
    /// What it wants to do.
    pub verb: Verb,
    /// The topic (`m/<tenant>/c/<channel>/…`, or relative to a thing's mountpoint).
    pub topic: String,
    /// The subject is a user (by default a thing of that name, else a user).
    #[arg(long)]
    pub user: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `fleetward status` flags.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The manifest directory, read afresh when no running `fleetward start` reported.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_MANIFESTS, env = "FLEETWARD_MANIFESTS")]
    pub manifests: PathBuf,
    /// The state directory of the running `fleetward start`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "FLEETWARD_STATE_DIR")]
    pub state_dir: PathBuf,
}

/// Objects and the index built from them, from a directory or a cluster.
struct Loaded {
    objects: Vec<Resource>,
    index: Index,
    /// The state directory's generated keys (a directory source only).
    keys: Option<KeyStore>,
    notes: Vec<String>,
}

impl Loaded {
    async fn from(source: &SourceArgs) -> anyhow::Result<Self> {
        if source.cluster {
            let client = crate::cluster::client().await?;
            let (objects, notes) = crate::cluster::objects(&client).await?;
            let mut index = Index::new();
            for o in &objects {
                index.apply(o.clone());
            }
            index.commit();
            return Ok(Self {
                objects,
                index,
                keys: None,
                notes,
            });
        }
        let (
            Local {
                directory, index, ..
            },
            report,
        ) = Local::load(&source.manifests, &source.state_dir)?;
        let notes = report
            .errors
            .iter()
            .map(|e| format!("skipped: {e}"))
            .collect();
        Ok(Self {
            objects: directory.declared().cloned().collect(),
            index,
            keys: Some(directory.keys().clone()),
            notes,
        })
    }

    /// The namespace of tenant `name`.
    fn tenant_namespace(&self, name: &str) -> Option<String> {
        self.objects.iter().find_map(|o| match o {
            Resource::Tenant(t) if t.metadata.name.as_deref() == Some(name) => {
                Some(t.namespace().to_owned())
            }
            _ => None,
        })
    }
}

fn split_subject(text: &str) -> anyhow::Result<(&str, &str)> {
    match text.split_once('/') {
        Some((t, s)) if !t.is_empty() && !s.is_empty() && !s.contains('/') => Ok((t, s)),
        _ => anyhow::bail!("`{text}` is not <tenant>/<name>, for example acme/sensor-1"),
    }
}

/// Prints a thing's key entries; the primary key alone on the last line.
pub async fn credentials(args: &CredentialsArgs) -> anyhow::Result<()> {
    let (tenant, thing) = split_subject(&args.thing)?;
    let (ns, secret, keys) = if args.source.cluster {
        let client = crate::cluster::client().await?;
        crate::cluster::thing_keys(&client, tenant, thing).await?
    } else {
        local_thing_keys(&args.source, tenant, thing).await?
    };
    let mut keys: Vec<(String, String)> = keys
        .into_iter()
        .map(|(entry, value)| {
            String::from_utf8(value)
                .map(|v| (entry.clone(), v.trim().to_owned()))
                .with_context(|| format!("entry {entry} of Secret {ns}/{secret} is not text"))
        })
        .collect::<anyhow::Result<_>>()?;
    if keys.is_empty() {
        anyhow::bail!("Secret {ns}/{secret} holds no key entry (an entry named key…)");
    }
    // `key` itself is the primary key; rotation adds `key-2` and the like beside it.
    keys.sort_by_key(|(entry, _)| (entry != "key", entry.clone()));
    outln!("# {tenant}/{thing}: Secret {ns}/{secret}");
    for (entry, value) in keys.iter().skip(1) {
        outln!(
            "# also valid: entry {entry}, fingerprint {}",
            KeyDigest::of(value.as_bytes()).fingerprint()
        );
    }
    let (entry, value) = &keys[0];
    outln!(
        "# entry {entry}, fingerprint {}; use it as the MQTT password with username {tenant}/{thing}",
        KeyDigest::of(value.as_bytes()).fingerprint()
    );
    outln!("{value}");
    Ok(())
}

async fn local_thing_keys(
    source: &SourceArgs,
    tenant: &str,
    thing: &str,
) -> anyhow::Result<(String, String, BTreeMap<String, Vec<u8>>)> {
    let loaded = Loaded::from(source).await?;
    let ns = loaded.tenant_namespace(tenant).with_context(|| {
        format!(
            "no Tenant {tenant} in {}; check the name with `fleetward status`",
            source.manifests.display()
        )
    })?;
    let secret = loaded
        .objects
        .iter()
        .find_map(|o| match o {
            Resource::Thing(t)
                if t.metadata.namespace.as_deref() == Some(ns.as_str())
                    && t.metadata.name.as_deref() == Some(thing) =>
            {
                Some(t.secret_name())
            }
            _ => None,
        })
        .with_context(|| format!("no Thing {thing} in namespace {ns} of tenant {tenant}"))?;
    // A Secret in the manifests (a brought-your-own key) wins over a generated one.
    let declared = loaded.objects.iter().find_map(|o| match o {
        Resource::Secret(s) if s.namespace == ns && s.name == secret => Some(s.entries.clone()),
        _ => None,
    });
    let keys = match declared {
        Some(entries) => entries
            .into_iter()
            .filter(|(k, _)| is_key_entry(k))
            .collect(),
        None => {
            let keys = loaded.keys.as_ref().context("no local key store")?;
            let key = keys
                .get(&ns, &secret)
                .with_context(|| format!("reading the generated key of {ns}/{secret}"))?
                .with_context(|| format!("no key was generated for {ns}/{secret} yet"))?;
            BTreeMap::from([("key".to_owned(), key.into_bytes())])
        }
    };
    Ok((ns, secret, keys))
}

/// Explains a decision; `Ok(true)` when allowed. Asks the `fleetward start` running on the
/// state directory when there is one (it answers from what it serves, a broken file's last
/// good version included), else reads the manifests (or the cluster).
pub async fn can_i(args: &CanIArgs) -> anyhow::Result<bool> {
    let question = Question {
        subject: args.subject.clone(),
        verb: args.verb,
        topic: args.topic.clone(),
        user: args.user,
    };
    // Refused before asking anyone.
    split_subject(&question.subject)?;
    let state_dir = args.source.state_dir.display();
    let mut why_files = format!("no server running on {state_dir}");
    if !args.source.cluster {
        match crate::control::Server::running(&args.source.state_dir, &args.source.manifests) {
            Ok(Some(server)) => match server.ask(&question).await {
                Ok(answer) => {
                    for line in &answer.lines {
                        outln!("{line}");
                    }
                    outln!(
                        "  answered by the running server at {} (fleetward start, pid {}, \
                         policy version {})",
                        server.url,
                        server.pid,
                        answer.version
                    );
                    return Ok(answer.allowed);
                }
                Err(e) => {
                    eprintln!("note: {e:#}");
                    why_files = format!(
                        "the server running on {state_dir} (pid {}) did not answer",
                        server.pid
                    );
                }
            },
            Ok(None) => {}
            Err(e) => {
                eprintln!("note: {e:#}");
                why_files = format!("the server running on {state_dir} serves other files");
            }
        }
    }
    let loaded = Loaded::from(&args.source).await?;
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    // The engines a dataplane attaches (Cedar), so the answer is what a dataplane decides.
    let snapshot = fleetward_dataplane::sync::engines::attach(loaded.index.snapshot().clone());
    let answer = answer(&snapshot, &question)?;
    for line in &answer.lines {
        outln!("{line}");
    }
    if args.source.cluster {
        outln!("  answered from the cluster of the current kubeconfig");
    } else {
        outln!(
            "  answered from the files in {}; {why_files}",
            args.source.manifests.display()
        );
    }
    Ok(answer.allowed)
}

/// What `can-i` asks, locally or of a running `fleetward start`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Question {
    /// `<tenant>/<thing>` or `<tenant>/<user>`.
    pub subject: String,
    /// Publish or subscribe.
    pub verb: Verb,
    /// The topic as given.
    pub topic: String,
    /// The subject is a user.
    #[serde(default)]
    pub user: bool,
}

/// The answer: allowed or not, and the lines that explain it (`yes` or `no` first).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// What `can-i` prints.
    pub lines: Vec<String>,
    /// The policy snapshot version it was answered from.
    pub version: u64,
}

/// Answers `question` from `snapshot`.
pub fn answer(snapshot: &Snapshot, question: &Question) -> anyhow::Result<Answer> {
    let (tenant, name) = split_subject(&question.subject)?;
    let mut lines = Vec::new();
    let is_thing = !question.user && snapshot.thing(tenant, name).is_some();
    let subject = if is_thing || (!question.user && snapshot.user(tenant, name).is_none()) {
        Subject::thing(tenant, name)
    } else {
        Subject::user(tenant, name)
    };
    let topic_text = match snapshot.mountpoint_of(tenant, name) {
        Some(mount)
            if is_thing
                && !question.topic.starts_with("m/")
                && !question.topic.starts_with('$') =>
        {
            format!("m/{tenant}/c/{mount}/{}", question.topic)
        }
        _ => question.topic.clone(),
    };
    let limits = TopicLimits::default();
    let (action, parsed) = match question.verb {
        Verb::Publish => (Action::Publish, parse_topic_name(&topic_text, &limits)),
        Verb::Subscribe => (Action::Subscribe, parse_filter(&topic_text, &limits)),
    };
    let version = snapshot.version();
    let topic = match parsed {
        Ok(t) => t,
        Err(e) => {
            lines.push("no".to_owned());
            lines.push(format!("  {topic_text} is not a valid topic: {e}"));
            return Ok(Answer {
                allowed: false,
                lines,
                version,
            });
        }
    };
    let e = snapshot.explain(&subject, action, &topic);
    let kind = subject.kind.as_str();
    match e.decision {
        Decision::Allow(AllowReason::Role) if e.policies.is_empty() => {
            lines.push("yes".to_owned());
            let role = e.role.map_or("", |r| r.as_str());
            lines.push(format!(
                "  user {tenant}/{name} has role {role} in the tenant"
            ));
        }
        Decision::Allow(_) => {
            lines.push("yes".to_owned());
            for g in &e.grants {
                lines.push(format!("  allowed by {g}"));
            }
        }
        Decision::Deny(reason) => {
            lines.push("no".to_owned());
            lines.push(format!(
                "  {}: {} ({kind} {tenant}/{name}, {} {topic_text})",
                reason.as_str(),
                deny_text(reason),
                action.as_str()
            ));
            for g in &e.grants {
                lines.push(format!("  {g}"));
            }
        }
    }
    // A tenant with an external engine names the engine's policies that decided.
    let verb = if e.decision.is_allowed() {
        "permitted"
    } else {
        "forbidden"
    };
    for p in &e.policies {
        lines.push(format!("  {verb} by Cedar policy {p}"));
    }
    Ok(Answer {
        allowed: e.decision.is_allowed(),
        lines,
        version,
    })
}

/// Prints what a running `fleetward start` serves, or a fresh read of the directory.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let report = match StatusReport::read(&args.state_dir)? {
        Some(r) if crate::local::process_alive(r.pid) => {
            outln!(
                "# reported by fleetward start (pid {}) at {}, from {}",
                r.pid,
                rfc3339(r.written_at_unix),
                r.manifests.display()
            );
            r
        }
        _ => {
            outln!(
                "# no report from a running fleetward start in {}; reading {} afresh",
                args.state_dir.display(),
                args.manifests.display()
            );
            let (local, scan) = Local::load(&args.manifests, &args.state_dir)?;
            local.report(&scan.errors)
        }
    };
    outln!("# {}", report.summary());
    for e in &report.errors {
        outln!("error: {}: {}", e.file.display(), e.message);
    }
    let rows: Vec<[String; 5]> = report
        .objects
        .iter()
        .map(|o| {
            let name = if o.namespace.is_empty() {
                o.name.clone()
            } else {
                format!("{}/{}", o.namespace, o.name)
            };
            let ready = if o.ready { "True" } else { "False" };
            let mut message = o.message.clone();
            if let Some(h) = &o.history {
                message.push_str(&format!(
                    "; history: {} messages, {} bytes, oldest {}",
                    h.messages,
                    h.bytes,
                    h.oldest.as_deref().unwrap_or("-")
                ));
            }
            [
                o.kind.clone(),
                name,
                ready.to_owned(),
                o.reason.clone(),
                message,
            ]
        })
        .collect();
    print_table(["KIND", "NAME", "READY", "REASON", "MESSAGE"], &rows);
    Ok(())
}

/// Seconds since the Unix epoch as RFC 3339 in UTC (`2025-06-01T12:00:00Z`).
fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| format!("{unix} (Unix time)"), |t| t.to_string())
}

/// Prints rows in columns as wide as their widest cell (the last column is not padded).
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header);
    for row in rows {
        line(std::array::from_fn(|i| row[i].as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn report_times_print_as_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_748_779_200), "2025-06-01T12:00:00Z");
        assert_eq!(rfc3339(u64::MAX), format!("{} (Unix time)", u64::MAX));
    }
}
