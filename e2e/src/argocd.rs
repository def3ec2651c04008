//! The Argo CD health check of `docs/argocd-health.lua`, run on an object by a real Lua interpreter as Argo CD runs it.
//!
//! Argo CD hands the script the object as the global table `obj` and takes the table the
//! script returns. Argo CD's Lua is 5.1 (gopher-lua), so the script is run by every
//! interpreter present among `lua5.1` and `lua5.4` (`scripts/install-tools.sh` installs both).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::workspace;

/// The interpreters tried, in order; at least one must be installed.
const INTERPRETERS: [&str; 2] = ["lua5.1", "lua5.4"];

/// The health check users paste into `argocd-cm`.
pub fn health_script() -> PathBuf {
    workspace::root().join("docs").join("argocd-health.lua")
}

/// What the health check returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `Healthy`, `Progressing`, `Degraded`, `Suspended`, `Missing` or `Unknown`.
    pub status: String,
    /// The message Argo CD shows beside it.
    pub message: String,
}

/// Runs the health check `script` on `obj` with each installed interpreter, checks that they
/// agree, and returns their answer.
pub fn health(script: &Path, obj: &Value) -> Result<Health> {
    let body =
        std::fs::read_to_string(script).with_context(|| format!("read {}", script.display()))?;
    // The script's top level becomes a function's body, so its `return hs` returns from it.
    let program = format!(
        "obj = {}\nlocal function check()\n{body}\nend\nlocal hs = check()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message), \"\\n\")\n",
        lua_literal(obj)
    );
    let mut answers = Vec::new();
    for lua in INTERPRETERS {
        if !installed(lua) {
            continue;
        }
        answers.push((lua, run(lua, &program)?));
    }
    let Some((first, health)) = answers.first().cloned() else {
        bail!(
            "no Lua interpreter found (tried {}); run scripts/install-tools.sh, which installs \
             the Debian packages lua5.1 and lua5.4",
            INTERPRETERS.join(", ")
        );
    };
    for (lua, other) in &answers[1..] {
        ensure!(
            *other == health,
            "{first} and {lua} disagree on the health check: {health:?} against {other:?}"
        );
    }
    Ok(health)
}

fn installed(lua: &str) -> bool {
    Command::new(lua)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(lua: &str, program: &str) -> Result<Health> {
    let mut child = Command::new(lua)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {lua}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(program.as_bytes())
            .with_context(|| format!("write the program to {lua}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("wait for {lua}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{lua} failed on the health check: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut lines = stdout.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let message = lines.next().unwrap_or_default().to_owned();
    Ok(Health { status, message })
}

/// `value` as a Lua table constructor, the way Argo CD converts an object: objects and arrays
/// become tables (arrays indexed from 1), `null` becomes `nil`.
pub fn lua_literal(value: &Value) -> String {
    let mut out = String::new();
    write_literal(&mut out, value);
    out
}

fn write_literal(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                write_literal(out, item);
                out.push(',');
            }
            out.push('}');
        }
        Value::Object(fields) => {
            out.push('{');
            for (key, item) in fields {
                out.push('[');
                write_string(out, key);
                out.push_str("]=");
                write_literal(out, item);
                out.push(',');
            }
            out.push('}');
        }
    }
}

/// A Lua string literal: printable ASCII as is, every other byte as a decimal escape.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for byte in s.bytes() {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_become_lua_tables_and_strings_are_escaped() {
        assert_eq!(
            lua_literal(&json!({"a": [1, "x\"y\\z"], "b": null, "c": true})),
            r#"{["a"]={1,"x\"y\\z",},["b"]=nil,["c"]=true,}"#
        );
        assert_eq!(lua_literal(&json!("é\n")), r#""\195\169\010""#);
    }
}
