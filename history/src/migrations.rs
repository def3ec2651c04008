//! The rules that keep every migration safe for a rolling deploy (issue 21), checked by a
//! test over `migrations/sqlite/` and `migrations/postgres/`; `migrations/README.md` is the
//! guide.
//!
//! During a rollout old and new pods run against the newest schema, so a migration after the
//! first may only *add*: `CREATE TABLE`, `CREATE INDEX` (`CONCURRENTLY` on PostgreSQL, in a
//! `-- no-transaction` migration; `ON ONLY` for a partitioned table's parent), and
//! `ALTER TABLE … ADD COLUMN` that is nullable or has a `DEFAULT`. A removal or a change
//! (`DROP`, `RENAME`, a column's `TYPE`, `SET NOT NULL`) is allowed only in a *contract*
//! migration whose header names the migration that deprecated what it removes, and that
//! migration must be at least two releases older. The headers, at the top of each file:
//!
//! ```sql
//! -- release: 0.4.0
//! -- deprecates: messages.old_column, old_index
//! -- contract: deprecated-by 3
//! ```
//!
//! sqlx's own `-- no-transaction` must be the very first line when present.

use std::fmt;
use std::path::Path;

/// Which SQL dialect a directory of migrations is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `migrations/sqlite/`.
    Sqlite,
    /// `migrations/postgres/`.
    Postgres,
}

/// One migration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// Its version, the number its file name starts with.
    pub version: i64,
    /// Its file name.
    pub file: String,
    /// Its text.
    pub sql: String,
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The migration's file name.
    pub file: String,
    /// What is wrong and what to do instead.
    pub problem: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.problem)
    }
}

/// A release, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release(pub u32, pub u32, pub u32);

impl Release {
    /// Parses `0.2.0`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
        let r = Self(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(r)
    }

    /// How many release lines (minor versions; a new major counts as far enough) `self` is
    /// after `older`.
    pub fn lines_after(self, older: Self) -> i64 {
        if self.0 > older.0 {
            return i64::MAX;
        }
        i64::from(self.1) - i64::from(older.1)
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What a migration's header says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `-- release: X.Y.Z`: the release that first ships it.
    pub release: Option<Release>,
    /// `-- contract: deprecated-by <version>`.
    pub contract: Option<i64>,
    /// `-- deprecates: table.column, index`: what a later contract migration may remove.
    pub deprecates: Vec<String>,
    /// sqlx's `-- no-transaction`, first line.
    pub no_transaction: bool,
}

/// Reads the header: the comment lines before the first statement.
pub fn header(sql: &str) -> Result<Header, String> {
    let mut h = Header {
        no_transaction: sql.starts_with("-- no-transaction"),
        ..Header::default()
    };
    for line in sql.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let comment = comment.trim();
        if let Some(v) = comment.strip_prefix("release:") {
            h.release = Some(
                Release::parse(v)
                    .ok_or_else(|| format!("`-- release: {}` is not X.Y.Z", v.trim()))?,
            );
        } else if let Some(v) = comment.strip_prefix("contract:") {
            let v = v.trim().strip_prefix("deprecated-by").map(str::trim);
            h.contract = Some(v.and_then(|v| v.parse().ok()).ok_or_else(|| {
                "write the contract header as `-- contract: deprecated-by <version>`".to_owned()
            })?);
        } else if let Some(v) = comment.strip_prefix("deprecates:") {
            h.deprecates.extend(
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty()),
            );
        }
    }
    Ok(h)
}

/// Reads the migrations of a directory (`<version>_<name>.sql`), by version.
pub fn read_dir(dir: &Path) -> Result<Vec<Migration>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_owned();
        if !file.ends_with(".sql") {
            continue;
        }
        let version = file
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{file}: a migration's name is <version>_<name>.sql"))?;
        let sql = std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e}"))?;
        out.push(Migration { version, file, sql });
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// Checks every rule; no violation means the directory is safe for a rolling deploy.
pub fn check(dialect: Dialect, migrations: &[Migration]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut headers = Vec::new();
    for m in migrations {
        let bad = |problem: String| Violation {
            file: m.file.clone(),
            problem,
        };
        let h = match header(&m.sql) {
            Ok(h) => h,
            Err(e) => {
                out.push(bad(e));
                Header::default()
            }
        };
        match (h.release, headers.last().and_then(|p: &(i64, Header)| p.1.release)) {
            (None, _) => out.push(bad("no `-- release: X.Y.Z` header: name the release that first ships it".into())),
            (Some(r), Some(prev)) if r < prev => out.push(bad(format!(
                "release {r} is older than the previous migration's {prev}: releases only go forward"
            ))),
            _ => {}
        }
        let statements = statements(&m.sql);
        if h.no_transaction && statements.len() > 1 {
            out.push(bad("a `-- no-transaction` migration holds one statement: a failure half-way cannot be rolled back".into()));
        }
        // What a contract migration may remove: what its deprecating migration names.
        let allowed: Option<&[String]> = h.contract.and_then(|v| {
            let Some((_, d)) = headers.iter().find(|(dv, _)| *dv == v) else {
                out.push(bad(format!("the contract names migration {v}, which is not an earlier migration here")));
                return None;
            };
            if d.deprecates.is_empty() {
                out.push(bad(format!("migration {v} deprecates nothing (`-- deprecates: table.column`)")));
                return None;
            }
            match (h.release, d.release) {
                (Some(now), Some(then)) if now.lines_after(then) >= 2 => Some(&d.deprecates[..]),
                (Some(now), Some(then)) => {
                    out.push(bad(format!("migration {v} deprecated this in {then}; its removal ships at least two releases later, not in {now}")));
                    None
                }
                _ => None,
            }
        });
        if headers.is_empty() {
            headers.push((m.version, h));
            continue;
        }
        for statement in &statements {
            match classify(dialect, statement) {
                Kind::Additive => {}
                Kind::Concurrent if h.no_transaction => {}
                Kind::Concurrent => out.push(bad(format!("`{statement}` needs `-- no-transaction` as the file's first line (CONCURRENTLY cannot run in a transaction)"))),
                Kind::Refused(why) => out.push(bad(format!("`{statement}`: {why}"))),
                Kind::Removal(targets) => {
                    let missing: Vec<&String> = targets
                        .iter()
                        .filter(|t| allowed.is_none_or(|a| !a.contains(t)))
                        .collect();
                    if h.contract.is_none() {
                        out.push(bad(format!("`{statement}` removes or changes what old pods use: only a contract migration (`-- contract: deprecated-by <version>`) may, two releases after the deprecation")));
                    } else if allowed.is_some() && !missing.is_empty() {
                        out.push(bad(format!("`{statement}` touches {missing:?}, which the deprecating migration does not list in `-- deprecates:`")));
                    }
                }
            }
        }
        headers.push((m.version, h));
    }
    out
}

/// What a statement does to old pods.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// It only adds.
    Additive,
    /// It only adds, and may not run in a transaction.
    Concurrent,
    /// It removes or changes these (`table`, `table.column`, `index`).
    Removal(Vec<String>),
    /// It is not allowed after the first migration at all.
    Refused(&'static str),
}

const NOT_ADDITIVE: &str = "not an additive statement (CREATE TABLE, CREATE INDEX, ALTER TABLE … ADD COLUMN): see migrations/README.md";

fn classify(dialect: Dialect, statement: &str) -> Kind {
    let words: Vec<String> = statement
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let skip_if = |w: &[&str], i: usize| -> usize {
        if w.get(i..i + 2) == Some(&["if", "exists"]) {
            i + 2
        } else if w.get(i..i + 3) == Some(&["if", "not", "exists"]) {
            i + 3
        } else {
            i
        }
    };
    match w.as_slice() {
        ["create", "table", ..] => Kind::Additive,
        ["create", "index", rest @ ..] | ["create", "unique", "index", rest @ ..] => {
            if dialect == Dialect::Sqlite {
                Kind::Additive
            } else if rest.first() == Some(&"concurrently") {
                Kind::Concurrent
            } else if rest.windows(2).any(|p| p == ["on", "only"]) {
                // A partitioned table's parent: metadata only, and PostgreSQL has no
                // CONCURRENTLY for it.
                Kind::Additive
            } else {
                Kind::Refused(
                    "an index on PostgreSQL is built CONCURRENTLY (or ON ONLY a partitioned parent), or it blocks writes for the whole build",
                )
            }
        }
        ["drop", "table" | "index" | "view", rest @ ..] => {
            let mut i = skip_if(rest, 0);
            if rest.get(i) == Some(&"concurrently") {
                i = skip_if(rest, i + 1);
            }
            Kind::Removal(rest[i..].iter().map(|t| unqualified(t)).collect())
        }
        ["alter", "index", rest @ ..] => {
            let i = skip_if(rest, 0);
            Kind::Removal(rest.get(i).map(|t| unqualified(t)).into_iter().collect())
        }
        ["alter", "table", rest @ ..] => {
            let mut i = skip_if(rest, 0);
            if rest.get(i) == Some(&"only") {
                i += 1;
            }
            let Some(table) = rest.get(i).map(|t| unqualified(t)) else {
                return Kind::Refused(NOT_ADDITIVE);
            };
            alter_table(&table, statement)
        }
        _ => Kind::Refused(NOT_ADDITIVE),
    }
}

/// The actions of `ALTER TABLE <table> a, b, …`.
fn alter_table(table: &str, statement: &str) -> Kind {
    let lower = statement.to_ascii_lowercase();
    let Some(at) = lower.find(table) else {
        return Kind::Refused(NOT_ADDITIVE);
    };
    let mut removed = Vec::new();
    for action in split_top_level(&lower[at + table.len()..], ',') {
        let w: Vec<&str> = action.split_whitespace().collect();
        let column = |i: usize| {
            let i = if w.get(i) == Some(&"column") {
                i + 1
            } else {
                i
            };
            let i = if w.get(i..i + 2) == Some(&["if", "exists"]) {
                i + 2
            } else {
                i
            };
            format!("{table}.{}", w.get(i).map_or("", |c| c.trim_matches('"')))
        };
        match w.as_slice() {
            ["add", "constraint", ..] => {
                return Kind::Refused("a new constraint can refuse what old pods write");
            }
            ["add", ..] => {
                let not_null = action.contains("not null") || action.contains("primary key");
                if not_null && !action.contains("default") {
                    return Kind::Refused(
                        "a NOT NULL column needs a DEFAULT, or old pods' inserts fail",
                    );
                }
            }
            ["drop", ..] => removed.push(column(1)),
            ["rename", "to", ..] => removed.push(table.to_owned()),
            ["rename", ..] => removed.push(column(1)),
            ["alter", ..]
                if ["type", "not null", "set data type"]
                    .iter()
                    .any(|k| action.contains(k)) =>
            {
                removed.push(column(1));
            }
            _ => return Kind::Refused(NOT_ADDITIVE),
        }
    }
    if removed.is_empty() {
        Kind::Additive
    } else {
        Kind::Removal(removed)
    }
}

fn unqualified(name: &str) -> String {
    name.rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches('"')
        .to_owned()
}

/// `text` split at `sep` outside parentheses and quotes.
fn split_top_level(text: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for c in text.chars() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && !quoted && depth == 0 => {
                out.push(std::mem::take(&mut cur).trim().to_owned());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur.trim().to_owned());
    out.retain(|s| !s.is_empty());
    out
}

/// The statements of a migration, comments removed and whitespace collapsed.
pub fn statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .map(strip_comment)
        .collect::<Vec<_>>()
        .join("\n");
    split_top_level(&without_comments, ';')
        .into_iter()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'-' if !quoted && bytes.get(i + 1) == Some(&b'-') => return &line[..i],
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests;
