//! What a tenant allows browsers: the page origins that may call the HTTP API across origins.

use serde::{Deserialize, Serialize};

/// A tenant's settings for browser pages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantWeb {
    /// Origins (`https://dash.example.com`, as a browser sends them in `Origin`) whose pages
    /// may call the tenant's HTTP API (CORS).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

impl TenantWeb {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.allowed_origins.is_empty()
    }

    /// Whether a page of `origin` may call the tenant's API.
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == origin)
    }
}

/// Reads an origin as a browser serializes it in `Origin`: `scheme://host[:port]`, lower
/// case, no path, no trailing `/`. Other forms are refused, since they could never match.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let refuse = |why: &str| {
        Err(format!(
            "{text:?} is not an origin: {why}; write it as a browser sends it, \
             scheme://host[:port] in lower case (for example https://dash.example.com)"
        ))
    };
    let Some((scheme, host)) = text.split_once("://") else {
        return refuse("it has no scheme://");
    };
    if scheme != "http" && scheme != "https" {
        return refuse("the scheme must be http or https");
    }
    if host.is_empty() {
        return refuse("it has no host");
    }
    if host.contains(['/', '?', '#', '*', '@']) || host.chars().any(char::is_whitespace) {
        return refuse("it must not have a path, a query, a wildcard or a user");
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) || !host.is_ascii() {
        return refuse("the host must be lower-case ASCII (punycode for other names)");
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_read_as_browsers_send_them() {
        for good in [
            "https://dash.example.com",
            "http://localhost:3000",
            "http://[::1]:8080",
        ] {
            assert_eq!(parse_origin(good).as_deref(), Ok(good));
        }
        for bad in [
            "*",
            "null",
            "dash.example.com",
            "https://dash.example.com/",
            "https://dash.example.com/app",
            "https://Dash.example.com",
            "ftp://dash.example.com",
            "https://*.example.com",
            "https://",
        ] {
            let e = parse_origin(bad).expect_err(bad);
            assert!(e.contains("scheme://host[:port]"), "{e}");
        }
    }

    #[test]
    fn only_listed_origins_are_allowed() {
        let web = TenantWeb {
            allowed_origins: vec!["https://dash.example.com".to_owned()],
        };
        assert!(web.allows("https://dash.example.com"));
        assert!(!web.allows("https://dash.example.com:8443"));
        assert!(!web.allows("http://dash.example.com"));
        assert!(!TenantWeb::default().allows("https://dash.example.com"));
    }
}
