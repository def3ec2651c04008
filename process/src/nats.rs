//! Names as NATS subject tokens: a token may not be empty nor hold `.`, whitespace, `*` or
//! `>`, and JetStream KV keys allow only `[-_=.a-zA-Z0-9]`; so every byte outside
//! `[-_a-zA-Z0-9]` is written `=XX` (upper-case hex of the UTF-8 byte), and an empty name is the
//! token `=`. The mapping is reversible and keeps distinct names distinct (the bus's property
//! tests, `dataplane/src/bus/subject.rs`). The bus and the history stream both use it.

/// One name (an MQTT level, a tenant, a channel) as one NATS token.
pub fn escape_token(level: &str) -> String {
    if level.is_empty() {
        return "=".to_owned();
    }
    let mut out = String::with_capacity(level.len());
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The name a token stands for; `None` for a token [`escape_token`] never writes.
pub fn unescape_token(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                let hex = token.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}
