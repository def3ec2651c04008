//! The reader's `filter`: an MQTT filter below a channel, matched against stored subtopics.

/// An MQTT filter below a channel: `room1/+` stands for `m/<tenant>/c/<channel>/room1/+`.
/// No filter (or `#`) matches every topic of the channel, its own included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubtopicFilter {
    levels: Vec<String>,
}

/// Why a filter is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// `#` not alone in the last level, or `+` not alone in its level.
    #[error("`#` must be the last level and `+` and `#` must stand alone in their level")]
    Wildcard,
    /// An empty filter, or one with NUL.
    #[error("the filter is empty or holds NUL")]
    Empty,
}

impl SubtopicFilter {
    /// Every topic of the channel.
    pub fn all() -> Self {
        Self {
            levels: vec!["#".into()],
        }
    }

    /// The filter `relative` stands for below the channel.
    pub fn parse(relative: &str) -> Result<Self, FilterError> {
        if relative.is_empty() || relative.contains('\0') {
            return Err(FilterError::Empty);
        }
        let levels: Vec<String> = relative.split('/').map(str::to_owned).collect();
        for (i, level) in levels.iter().enumerate() {
            let wild = level.contains('#') || level.contains('+');
            let alone = level == "+" || (level == "#" && i + 1 == levels.len());
            if wild && !alone {
                return Err(FilterError::Wildcard);
            }
        }
        Ok(Self { levels })
    }

    /// The filter as the text below the channel (`room1/+`).
    pub fn as_relative(&self) -> String {
        self.levels.join("/")
    }

    /// Whether a stored subtopic (`""` for the channel's own topic, else `/a/b`) matches, by
    /// MQTT's rules for the whole topic.
    pub fn matches(&self, subtopic: &str) -> bool {
        let topic: Vec<&str> = if subtopic.is_empty() {
            Vec::new()
        } else {
            subtopic[1..].split('/').collect()
        };
        let mut t = topic.iter();
        for level in &self.levels {
            match level.as_str() {
                "#" => return true,
                "+" => {
                    if t.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if t.next() != Some(&literal) {
                        return false;
                    }
                }
            }
        }
        t.next().is_none()
    }

    /// What every matching subtopic starts with, and whether it must equal it (no wildcard):
    /// the part a store narrows its scan with before [`SubtopicFilter::matches`].
    pub fn literal_prefix(&self) -> (String, bool) {
        let mut prefix = String::new();
        for level in &self.levels {
            match level.as_str() {
                // `a/#` matches `a` itself too: its prefix is `/a`, no trailing slash.
                "#" => return (prefix, false),
                "+" => {
                    prefix.push('/');
                    return (prefix, false);
                }
                literal => {
                    prefix.push('/');
                    prefix.push_str(literal);
                }
            }
        }
        (prefix, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> SubtopicFilter {
        SubtopicFilter::parse(s).unwrap()
    }

    #[test]
    fn matching_follows_mqtt_for_the_whole_topic() {
        assert!(SubtopicFilter::all().matches(""));
        assert!(SubtopicFilter::all().matches("/a/b"));
        assert!(f("a/#").matches("/a"));
        assert!(f("a/#").matches("/a/b/c"));
        assert!(!f("a/#").matches("/ab"));
        assert!(f("+").matches("/x"));
        assert!(f("+").matches("/"));
        assert!(!f("+").matches(""));
        assert!(!f("+").matches("/x/y"));
        assert!(f("a/+/c").matches("/a/b/c"));
        assert!(!f("a/b").matches("/a/b/c"));
        assert!(f("a/b").matches("/a/b"));
    }

    #[test]
    fn the_literal_prefix_covers_every_match() {
        assert_eq!(f("a/b").literal_prefix(), ("/a/b".into(), true));
        assert_eq!(f("a/#").literal_prefix(), ("/a".into(), false));
        assert_eq!(f("a/+/c").literal_prefix(), ("/a/".into(), false));
        assert_eq!(f("+").literal_prefix(), ("/".into(), false));
        assert_eq!(f("#").literal_prefix(), (String::new(), false));
    }

    #[test]
    fn misplaced_wildcards_are_refused() {
        assert_eq!(SubtopicFilter::parse("a/#/b"), Err(FilterError::Wildcard));
        assert_eq!(SubtopicFilter::parse("a+"), Err(FilterError::Wildcard));
        assert_eq!(SubtopicFilter::parse(""), Err(FilterError::Empty));
    }
}
