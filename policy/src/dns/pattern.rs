//! `domainNames` patterns: an exact name, or `*.` followed by a name, matching one or more
//! labels in front of it (`*.example.com` matches `a.example.com` and `a.b.example.com`, not
//! `example.com`). Case-insensitive; a trailing dot (the root) is tolerated on both sides.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cnp::validate::domain_name;

/// A name as compared: ASCII lowercase, without the trailing dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// One `domainNames` entry, validated (the CRD's pattern) and normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPattern {
    /// As normalized, `*.` included when a wildcard: how it is shown and sent.
    text: Arc<str>,
}

impl DomainPattern {
    /// `None` when `s` is not a domain name the CRD admits.
    pub fn parse(s: &str) -> Option<Self> {
        domain_name(s).then(|| DomainPattern {
            text: Arc::from(normalize(s)),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_wildcard(&self) -> bool {
        self.text.starts_with("*.")
    }

    /// Whether `name` (already [`normalize`]d) is one this pattern allows.
    pub fn matches(&self, name: &str) -> bool {
        match self.text.strip_prefix('*') {
            // `suffix` is ".example.com": at least one label must stand before it.
            Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
            None => *name == *self.text,
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for DomainPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DomainPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DomainPattern::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a domain name pattern")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DomainPattern {
        DomainPattern::parse(s).expect(s)
    }

    #[test]
    fn exact_names_match_only_themselves_case_and_root_dot_aside() {
        let k = p("Kubernetes.IO.");
        assert_eq!(k.as_str(), "kubernetes.io");
        assert!(k.matches(&normalize("kubernetes.io")));
        assert!(k.matches(&normalize("KUBERNETES.io.")));
        for other in [
            "www.kubernetes.io",
            "my-kubernetes.io",
            "wikipedia.org",
            "io",
        ] {
            assert!(!k.matches(other), "{other}");
        }
    }

    #[test]
    fn a_wildcard_matches_one_or_more_labels_and_never_the_bare_suffix() {
        let w = p("*.kubernetes.io");
        assert!(w.is_wildcard());
        for yes in ["www.kubernetes.io", "latest.blog.kubernetes.io"] {
            assert!(w.matches(yes), "{yes}");
        }
        for no in [
            "kubernetes.io",
            "xkubernetes.io",
            ".kubernetes.io",
            "wikipedia.org",
        ] {
            assert!(!w.matches(no), "{no}");
        }
    }

    #[test]
    fn what_the_crd_refuses_is_no_pattern_and_round_trips_as_text() {
        for bad in ["kubernetes", "a.*.io", "*kubernetes.io", ""] {
            assert!(DomainPattern::parse(bad).is_none(), "{bad}");
        }
        let json = serde_json::to_string(&p("*.Example.com")).unwrap();
        assert_eq!(json, "\"*.example.com\"");
        let back: DomainPattern = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p("*.example.com"));
        assert!(serde_json::from_str::<DomainPattern>("\"a..b\"").is_err());
    }
}
