//! The topic grammar: `m/<tenant>/c/<channel>[/<subtopic>…]` names, filters, and mountpoints.

use std::fmt;

/// Limits applied while parsing topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicLimits {
    /// The longest topic or filter accepted, in bytes, counting any `$share/<group>/` prefix
    /// and, for a mounted client, the mountpoint prefix.
    pub max_len: usize,
}

impl Default for TopicLimits {
    /// 1024 bytes: far above any real device topic, far below MQTT's 65535.
    fn default() -> Self {
        Self { max_len: 1024 }
    }
}

/// Why a topic or filter was refused. Every rule of the grammar has its own variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is empty.
    #[error("the topic is empty")]
    Empty,
    /// The topic is longer than allowed.
    #[error("the topic is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The topic is not valid UTF-8.
    #[error("the topic is not valid UTF-8")]
    InvalidUtf8,
    /// The topic contains the NUL character.
    #[error("the topic contains NUL")]
    ContainsNul,
    /// `$SYS` topics are reserved for the broker.
    #[error("`$SYS` topics are reserved for the broker")]
    SysTopic,
    /// Topics starting with `$` (other than `$share/` filters) are reserved.
    #[error("topics starting with `$` are reserved; use m/<tenant>/c/<channel>/…")]
    DollarTopic,
    /// `$share/…` is only a subscribe filter; nothing can be published to it.
    #[error("`$share/…` is a subscription, not a topic one can publish to")]
    ShareInTopicName,
    /// The share group of `$share/<group>/<filter>` is empty or has a wildcard.
    #[error(
        "the share group in `$share/<group>/<filter>` must be a non-empty name without wildcards"
    )]
    InvalidShareGroup,
    /// `$share/<group>` has no filter after the group.
    #[error("`$share/<group>/` must be followed by a filter")]
    ShareMissingFilter,
    /// The topic does not start with `m/<tenant>/c/`.
    #[error("the topic must have the form m/<tenant>/c/<channel>[/<subtopic>…]")]
    NotFleetwardTopic,
    /// The topic ends before the channel level.
    #[error("the topic has no channel; expected m/<tenant>/c/<channel>")]
    MissingChannel,
    /// The tenant level is empty.
    #[error("the tenant level of the topic is empty")]
    EmptyTenant,
    /// The channel level is empty.
    #[error("the channel level of the topic is empty")]
    EmptyChannel,
    /// A wildcard stands for the `m` or `c` level.
    #[error("wildcards are only allowed in the subtopic, after m/<tenant>/c/<channel>/")]
    WildcardInPrefix,
    /// A wildcard stands for the tenant.
    #[error("the tenant level must be a name, not a wildcard")]
    WildcardInTenant,
    /// A wildcard stands for the channel.
    #[error("the channel level must be a name, not a wildcard")]
    WildcardInChannel,
    /// A topic name (publish, will) contains `+` or `#`.
    #[error("a topic to publish to must not contain `+` or `#`")]
    WildcardInTopicName,
    /// `#` is followed by more levels.
    #[error("`#` must be the last level of a filter")]
    HashNotLast,
    /// A wildcard shares its level with other characters, as in `a+` or `#b`.
    #[error("a wildcard must be a whole level (`a/+/b`, not `a+/b`)")]
    PartialWildcard,
}

impl TopicError {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicError::Empty => "empty",
            TopicError::TooLong { .. } => "too_long",
            TopicError::InvalidUtf8 => "invalid_utf8",
            TopicError::ContainsNul => "contains_nul",
            TopicError::SysTopic => "sys_topic",
            TopicError::DollarTopic => "dollar_topic",
            TopicError::ShareInTopicName => "share_in_topic_name",
            TopicError::InvalidShareGroup => "invalid_share_group",
            TopicError::ShareMissingFilter => "share_missing_filter",
            TopicError::NotFleetwardTopic => "not_fleetward_topic",
            TopicError::MissingChannel => "missing_channel",
            TopicError::EmptyTenant => "empty_tenant",
            TopicError::EmptyChannel => "empty_channel",
            TopicError::WildcardInPrefix => "wildcard_in_prefix",
            TopicError::WildcardInTenant => "wildcard_in_tenant",
            TopicError::WildcardInChannel => "wildcard_in_channel",
            TopicError::WildcardInTopicName => "wildcard_in_topic_name",
            TopicError::HashNotLast => "hash_not_last",
            TopicError::PartialWildcard => "partial_wildcard",
        }
    }
}

/// Whether a parsed topic is a name (publish, will) or a subscribe filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// A topic name: no wildcards.
    Name,
    /// A subscribe filter: may have `+` and `#` in the subtopic.
    Filter,
}

/// A parsed topic name or filter, borrowing the input. Parsing does not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Topic<'a> {
    text: &'a str,
    share_group: Option<&'a str>,
    tenant: &'a str,
    channel: &'a str,
    subtopic: Option<&'a str>,
    kind: TopicKind,
}

impl<'a> Topic<'a> {
    /// The topic without any `$share/<group>/` prefix.
    pub fn as_str(&self) -> &'a str {
        self.text
    }
    /// The tenant level.
    pub fn tenant(&self) -> &'a str {
        self.tenant
    }
    /// The channel level.
    pub fn channel(&self) -> &'a str {
        self.channel
    }
    /// Everything after `m/<tenant>/c/<channel>/`; `None` for the channel itself.
    pub fn subtopic(&self) -> Option<&'a str> {
        self.subtopic
    }
    /// The group of a `$share/<group>/<filter>` subscription.
    pub fn share_group(&self) -> Option<&'a str> {
        self.share_group
    }
    /// Name or filter.
    pub fn kind(&self) -> TopicKind {
        self.kind
    }
    /// Whether the subtopic has a `+` or `#` level.
    pub fn has_wildcards(&self) -> bool {
        self.kind == TopicKind::Filter
            && self
                .subtopic
                .is_some_and(|s| s.split('/').any(|l| l == "+" || l == "#"))
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(group) = self.share_group {
            write!(f, "$share/{group}/")?;
        }
        f.write_str(self.text)
    }
}

/// Parses a topic to publish to (or a will topic).
pub fn parse_topic_name<'a, T>(input: &'a T, limits: &TopicLimits) -> Result<Topic<'a>, TopicError>
where
    T: AsRef<[u8]> + ?Sized,
{
    let text = checked_text(input.as_ref(), limits)?;
    if text.starts_with("$share/") || text == "$share" {
        return Err(TopicError::ShareInTopicName);
    }
    parse_levels(text, None, TopicKind::Name)
}

/// Parses a subscribe (or unsubscribe) filter, including `$share/<group>/<filter>`.
pub fn parse_filter<'a, T>(input: &'a T, limits: &TopicLimits) -> Result<Topic<'a>, TopicError>
where
    T: AsRef<[u8]> + ?Sized,
{
    let text = checked_text(input.as_ref(), limits)?;
    if let Some(rest) = text.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').unwrap_or((rest, ""));
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::InvalidShareGroup);
        }
        if filter.is_empty() {
            return Err(TopicError::ShareMissingFilter);
        }
        return parse_levels(filter, Some(group), TopicKind::Filter);
    }
    if text == "$share" {
        return Err(TopicError::InvalidShareGroup);
    }
    parse_levels(text, None, TopicKind::Filter)
}

fn checked_text<'a>(input: &'a [u8], limits: &TopicLimits) -> Result<&'a str, TopicError> {
    if input.is_empty() {
        return Err(TopicError::Empty);
    }
    if input.len() > limits.max_len {
        return Err(TopicError::TooLong {
            len: input.len(),
            max: limits.max_len,
        });
    }
    let text = std::str::from_utf8(input).map_err(|_| TopicError::InvalidUtf8)?;
    if text.contains('\0') {
        return Err(TopicError::ContainsNul);
    }
    Ok(text)
}

fn is_wild(level: &str) -> bool {
    level.contains(['+', '#'])
}

fn parse_levels<'a>(
    text: &'a str,
    share_group: Option<&'a str>,
    kind: TopicKind,
) -> Result<Topic<'a>, TopicError> {
    if text.starts_with('$') {
        let first = text.split('/').next().unwrap_or(text);
        return Err(if first == "$SYS" {
            TopicError::SysTopic
        } else {
            TopicError::DollarTopic
        });
    }
    let mut parts = text.splitn(5, '/');
    let m = parts.next().unwrap_or("");
    let tenant = parts.next();
    let c = parts.next();
    let channel = parts.next();
    let subtopic = parts.next();
    if is_wild(m) || c.is_some_and(is_wild) {
        return Err(TopicError::WildcardInPrefix);
    }
    if m != "m" {
        return Err(TopicError::NotFleetwardTopic);
    }
    let tenant = tenant.ok_or(TopicError::NotFleetwardTopic)?;
    if is_wild(tenant) {
        return Err(TopicError::WildcardInTenant);
    }
    if tenant.is_empty() {
        return Err(TopicError::EmptyTenant);
    }
    match c {
        Some("c") => {}
        Some(_) => return Err(TopicError::NotFleetwardTopic),
        None => return Err(TopicError::MissingChannel),
    }
    let channel = channel.ok_or(TopicError::MissingChannel)?;
    if is_wild(channel) {
        return Err(TopicError::WildcardInChannel);
    }
    if channel.is_empty() {
        return Err(TopicError::EmptyChannel);
    }
    if let Some(sub) = subtopic {
        check_subtopic(sub, kind)?;
    }
    Ok(Topic {
        text,
        share_group,
        tenant,
        channel,
        subtopic,
        kind,
    })
}

fn check_subtopic(sub: &str, kind: TopicKind) -> Result<(), TopicError> {
    if kind == TopicKind::Name {
        return if is_wild(sub) {
            Err(TopicError::WildcardInTopicName)
        } else {
            Ok(())
        };
    }
    let mut levels = sub.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "+" => {}
            "#" if levels.peek().is_some() => return Err(TopicError::HashNotLast),
            "#" => {}
            l if is_wild(l) => return Err(TopicError::PartialWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// Whether an MQTT filter matches a topic name, with MQTT's rule that a wildcard in the first
/// level never matches a topic starting with `$`. Both are taken as already valid.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // Most filters name one topic: no need to walk the levels of both.
    if !filter.bytes().any(|b| b == b'+' || b == b'#') {
        return filter == topic;
    }
    let first_wild = filter.starts_with(['+', '#']);
    if first_wild && topic.starts_with('$') {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// A thing's mountpoint: its topics are taken relative to `m/<tenant>/c/<channel>/`.
///
/// Mount what the client sends (PUBLISH, SUBSCRIBE, UNSUBSCRIBE, will), then parse and
/// authorize the full topic; unmount what is delivered to it. A client topic starting with `$`
/// is mounted like any other and stays a `$`-topic for the client: use [`filter_matches`] on
/// the client's own filter and the unmounted topic to decide delivery, so a client's `#` or
/// `+/…` does not receive it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mountpoint {
    prefix: String,
}

impl Mountpoint {
    /// The mountpoint of a thing of `tenant` mounted on `channel`.
    pub fn new(tenant: &str, channel: &str) -> Self {
        Self {
            prefix: format!("m/{tenant}/c/{channel}/"),
        }
    }

    /// The prefix, `m/<tenant>/c/<channel>/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Maps a topic name sent by the client to its full topic, checked by the grammar.
    pub fn mount_topic_name(
        &self,
        input: &[u8],
        limits: &TopicLimits,
    ) -> Result<String, TopicError> {
        let client = self.client_text(input, limits)?;
        if client.starts_with("$share/") || client == "$share" {
            return Err(TopicError::ShareInTopicName);
        }
        let full = format!("{}{client}", self.prefix);
        parse_topic_name(&full, limits)?;
        Ok(full)
    }

    /// Maps a filter sent by the client (perhaps `$share/<group>/<filter>`) to its full filter,
    /// checked by the grammar.
    pub fn mount_filter(&self, input: &[u8], limits: &TopicLimits) -> Result<String, TopicError> {
        let client = self.client_text(input, limits)?;
        let full = match client.strip_prefix("$share/") {
            Some(rest) => {
                let (group, filter) = rest.split_once('/').unwrap_or((rest, ""));
                if group.is_empty() || is_wild(group) {
                    return Err(TopicError::InvalidShareGroup);
                }
                if filter.is_empty() {
                    return Err(TopicError::ShareMissingFilter);
                }
                format!("$share/{group}/{}{filter}", self.prefix)
            }
            None => format!("{}{client}", self.prefix),
        };
        parse_filter(&full, limits)?;
        Ok(full)
    }

    /// Maps a full topic back to what the client sees; `None` when the topic is not under the
    /// mountpoint or is the channel itself (which has no name under the mountpoint).
    pub fn unmount<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.prefix)
            .filter(|rest| !rest.is_empty())
    }

    fn client_text<'i>(
        &self,
        input: &'i [u8],
        limits: &TopicLimits,
    ) -> Result<&'i str, TopicError> {
        let mounted = TopicLimits {
            max_len: limits.max_len.saturating_sub(self.prefix.len()),
        };
        checked_text(input, &mounted)
    }
}

#[cfg(test)]
#[path = "topic_tests.rs"]
mod tests;
