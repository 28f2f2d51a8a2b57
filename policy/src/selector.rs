//! Label selectors (`matchLabels` + `matchExpressions`), validated once and then matched.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A validated label selector. All terms are ANDed; no terms selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Selects every object (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn selects_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Validates a selector; `field` is its path, used in error messages.
    pub fn parse(sel: &LabelSelector, field: &str) -> Result<Self, (String, String)> {
        let mut requirements = Vec::new();
        if let Some(labels) = &sel.match_labels {
            for (k, v) in labels {
                validate_key(k).map_err(|e| (format!("{field}.matchLabels"), e.to_string()))?;
                requirements.push(Requirement::In(k.clone(), vec![v.clone()]));
            }
        }
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let here = format!("{field}.matchExpressions[{i}]");
            validate_key(&expr.key).map_err(|e| (format!("{here}.key"), e.to_string()))?;
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            let req = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err((
                        format!("{here}.values"),
                        format!("operator {} requires at least one value", expr.operator),
                    ))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err((
                        format!("{here}.values"),
                        format!("operator {} must not have values", expr.operator),
                    ))
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err((
                        format!("{here}.operator"),
                        format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                    ))
                }
            };
            requirements.push(req);
        }
        Ok(Selector { requirements })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // NotIn also matches objects that do not carry the key at all.
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Why a text is not a label key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelKeyError {
    #[error("label key must not be empty")]
    Empty,
    #[error("label key {0:?} has an invalid prefix")]
    Prefix(String),
    #[error("invalid label key {0:?}")]
    Invalid(String),
}

fn validate_key(key: &str) -> Result<(), LabelKeyError> {
    if key.is_empty() {
        return Err(LabelKeyError::Empty);
    }
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 {
                return Err(LabelKeyError::Prefix(key.to_string()));
            }
            name
        }
        None => key,
    };
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(LabelKeyError::Invalid(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|s| s.to_string()).collect())
            },
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        let s = LabelSelector {
            match_labels: if ml.is_empty() {
                None
            } else {
                Some(labels(ml))
            },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        };
        Selector::parse(&s, "spec.podSelector").unwrap()
    }

    #[test]
    fn empty_selects_everything() {
        let s = sel(&[], vec![]);
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = sel(
            &[("app", "web")],
            vec![expr("tier", "In", &["front", "edge"])],
        );
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "edge")])));
    }

    #[test]
    fn not_in_matches_missing_key() {
        let s = sel(&[], vec![expr("env", "NotIn", &["prod"])]);
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let e = sel(&[], vec![expr("team", "Exists", &[])]);
        let d = sel(&[], vec![expr("team", "DoesNotExist", &[])]);
        let with = labels(&[("team", "")]);
        assert!(e.matches(&with) && !d.matches(&with));
        assert!(!e.matches(&labels(&[])) && d.matches(&labels(&[])));
    }

    #[test]
    fn invalid_operators_and_values_are_reported_with_their_field() {
        let bad = |op: &str, vals: &[&str]| {
            let s = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![expr("k", op, vals)]),
            };
            Selector::parse(&s, "spec.podSelector").unwrap_err()
        };
        let (field, msg) = bad("Equals", &["x"]);
        assert_eq!(field, "spec.podSelector.matchExpressions[0].operator");
        assert!(msg.contains("Equals"), "{msg}");
        assert_eq!(
            bad("In", &[]).0,
            "spec.podSelector.matchExpressions[0].values"
        );
        assert_eq!(
            bad("Exists", &["x"]).0,
            "spec.podSelector.matchExpressions[0].values"
        );
        let s = LabelSelector {
            match_labels: Some(labels(&[("bad key!", "v")])),
            match_expressions: None,
        };
        assert_eq!(Selector::parse(&s, "x").unwrap_err().0, "x.matchLabels");
    }
}
