//! Subtopic patterns of grants, and how they match topics and cover or overlap filters.
//!
//! A subtopic is the part of a topic after `m/<tenant>/c/<channel>`, as a sequence of levels.
//! It may have no level at all (the channel itself). Patterns use MQTT wildcards: `+` is one
//! level, `#` (last only) is zero or more levels. The empty pattern `""` is the channel itself.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated subtopic pattern of a grant's allow or deny list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubtopicPattern {
    text: Box<str>,
}

/// Why a subtopic pattern was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// `#` must be the last level.
    #[error("`#` must be the last level of a subtopic pattern")]
    HashNotLast,
    /// A wildcard must be a whole level, as in `a/+/b`, not `a+`.
    #[error("a wildcard must be a whole level (`a/+/b`, not `a+/b`)")]
    PartialWildcard,
    /// NUL is not allowed anywhere in a topic.
    #[error("a subtopic pattern must not contain NUL")]
    ContainsNul,
}

impl SubtopicPattern {
    /// Parses a pattern such as `sensors/+/temp`, `alerts/#`, `#`, or `""` (the channel itself).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.contains('\0') {
            return Err(PatternError::ContainsNul);
        }
        if !text.is_empty() {
            let mut levels = text.split('/').peekable();
            while let Some(level) = levels.next() {
                match level {
                    "+" => {}
                    "#" if levels.peek().is_some() => return Err(PatternError::HashNotLast),
                    "#" => {}
                    l if l.contains(['+', '#']) => return Err(PatternError::PartialWildcard),
                    _ => {}
                }
            }
        }
        Ok(Self { text: text.into() })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Number of levels, not counting a trailing `#`.
    fn fixed_len(&self) -> usize {
        let n = self.levels().count();
        if self.text.ends_with('#') { n - 1 } else { n }
    }

    fn levels(&self) -> std::iter::Flatten<std::option::IntoIter<std::str::Split<'_, char>>> {
        levels(Some(&*self.text).filter(|t| !t.is_empty()))
    }

    /// Whether the pattern matches a concrete subtopic (`None` = no subtopic).
    pub fn matches(&self, subtopic: Option<&str>) -> bool {
        let mut p = self.levels();
        let mut t = levels(subtopic);
        loop {
            match (p.next(), t.next()) {
                (Some("#"), _) => return true,
                (None, None) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    /// Whether some topic matches both this pattern and the subscribe filter's subtopic.
    pub fn overlaps(&self, filter_subtopic: Option<&str>) -> bool {
        let mut p = self.levels();
        let mut f = levels(filter_subtopic);
        loop {
            match (p.next(), f.next()) {
                (Some("#"), _) | (_, Some("#")) => return true,
                (None, None) => return true,
                (Some(_), None) | (None, Some(_)) => return false,
                (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    /// Whether this pattern matches every topic of `generic`, a fixed-length filter whose `+`
    /// levels stand for any level.
    fn covers_fixed<'a>(&self, generic: impl Iterator<Item = &'a str>) -> bool {
        let mut p = self.levels();
        let mut g = generic;
        loop {
            match (p.next(), g.next()) {
                (Some("#"), _) => return true,
                (None, None) => return true,
                (Some("+"), Some(_)) => {}
                // A literal level covers a literal only; a `+` in the filter is any level.
                (Some(a), Some(b)) if a == b && b != "+" => {}
                _ => return false,
            }
        }
    }
}

impl fmt::Display for SubtopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for SubtopicPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SubtopicPattern {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SubtopicPattern> for String {
    fn from(p: SubtopicPattern) -> String {
        p.text.into()
    }
}

/// The levels of a subtopic; `None` has no level, `Some("")` has one empty level.
pub(crate) fn levels(
    subtopic: Option<&str>,
) -> std::iter::Flatten<std::option::IntoIter<std::str::Split<'_, char>>> {
    subtopic.map(|s| s.split('/')).into_iter().flatten()
}

/// Whether every topic the filter subtopic can match is matched by at least one pattern.
///
/// For a filter without `#` this holds exactly when one pattern alone covers it (level names
/// are unbounded, so literals can never add up to a `+`). A trailing `#` is the union of the
/// prefix followed by k `+` levels for every k ≥ 0; beyond the longest pattern every k has the
/// same answer, so checking k up to that length is exact.
pub fn covers<'p, I>(patterns: I, filter_subtopic: Option<&str>) -> bool
where
    I: IntoIterator<Item = &'p SubtopicPattern>,
    I::IntoIter: Clone,
{
    let patterns = patterns.into_iter();
    let Some(sub) = filter_subtopic else {
        return patterns.clone().any(|p| p.matches(None));
    };
    let Some(prefix) = sub.strip_suffix('#') else {
        return patterns.clone().any(|p| p.covers_fixed(sub.split('/')));
    };
    // `prefix` is "" (filter `#`) or ends with '/'.
    let prefix = prefix.strip_suffix('/');
    let longest = patterns.clone().map(|p| p.fixed_len()).max().unwrap_or(0);
    let prefix_len = levels(prefix).count();
    let extra = longest.saturating_sub(prefix_len) + 1;
    (0..=extra).all(|k| {
        patterns.clone().any(|p| {
            let generic = levels(prefix).chain(std::iter::repeat_n("+", k));
            p.covers_fixed(generic)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SubtopicPattern {
        SubtopicPattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn refuses_bad_patterns() {
        assert_eq!(
            SubtopicPattern::parse("a/#/b"),
            Err(PatternError::HashNotLast)
        );
        assert_eq!(
            SubtopicPattern::parse("a+"),
            Err(PatternError::PartialWildcard)
        );
        assert_eq!(
            SubtopicPattern::parse("a/b#"),
            Err(PatternError::PartialWildcard)
        );
        assert_eq!(
            SubtopicPattern::parse("a\0"),
            Err(PatternError::ContainsNul)
        );
        assert!(SubtopicPattern::parse("").is_ok());
        assert!(SubtopicPattern::parse("+/+/#").is_ok());
    }

    #[test]
    fn matches_topics() {
        assert!(p("#").matches(None));
        assert!(p("a/#").matches(Some("a")));
        assert!(p("a/#").matches(Some("a/b/c")));
        assert!(!p("a/#").matches(Some("b")));
        assert!(p("a/+").matches(Some("a/x")));
        assert!(!p("a/+").matches(Some("a")));
        assert!(!p("a/+").matches(Some("a/x/y")));
        assert!(p("").matches(None));
        assert!(!p("").matches(Some("")));
        assert!(p("+").matches(Some("")));
    }

    #[test]
    fn overlaps_filters() {
        assert!(p("secret").overlaps(Some("#")));
        assert!(p("secret").overlaps(Some("+")));
        assert!(p("a/secret").overlaps(Some("+/+")));
        assert!(!p("a/secret").overlaps(Some("+")));
        assert!(p("a/#").overlaps(Some("a")));
        assert!(p("+/x").overlaps(Some("y/+")));
        assert!(!p("a/x").overlaps(Some("b/+")));
        assert!(p("").overlaps(Some("#")));
        assert!(!p("").overlaps(Some("+")));
        assert!(p("#").overlaps(None));
    }

    #[test]
    fn covers_single_and_union() {
        assert!(covers(&[p("#")], Some("#")));
        assert!(covers(&[p("a/#")], Some("a/+/b")));
        assert!(!covers(&[p("a/x")], Some("a/+")));
        assert!(!covers(&[p("a/+")], Some("a/#")), "a/# also matches `a`");
        assert!(covers(&[p("a"), p("a/+/#")], Some("a/#")));
        assert!(covers(&[p(""), p("+"), p("+/+/#")], Some("#")));
        assert!(!covers(&[p(""), p("+"), p("+/+/+")], Some("#")));
        assert!(!covers(&[p("x/+"), p("+/y")], Some("+/+")));
        assert!(covers(&[p("#")], None));
        assert!(!covers(&[p("+")], None));
        assert!(!covers(std::iter::empty::<&SubtopicPattern>(), Some("a")));
    }
}
