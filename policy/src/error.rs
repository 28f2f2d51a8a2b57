//! Errors that name the object and the field at fault.

use std::fmt;

use serde::Serialize;

/// Identifies a Kubernetes object in messages: kind, namespace/name, and where it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// File (and document) the object came from, when it came from a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An object without a name is still named in messages.
        let name = if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        };
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, name)?,
            None => write!(f, "{} {}", self.kind, name)?,
        }
        if let Some(source) = &self.source {
            write!(f, " (in {source})")?;
        }
        Ok(())
    }
}

/// An object that could not be used, with the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{object}: {at}{message}", at = field_prefix(.field))]
pub struct ObjectError {
    pub object: Box<ObjectRef>,
    /// JSON path of the offending field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

/// `field: `, or nothing when the whole object is at fault.
fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}
