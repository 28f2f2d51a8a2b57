//! Validation errors of ClusterNetworkPolicies, worded as the API server words its own
//! (`spec.ingress[0].action: Unsupported value: "Allow"`), each naming the object and the field.

use crate::error::{ObjectError, ObjectRef};

/// Why the API server (CRD schema or CEL rule) would reject a ClusterNetworkPolicy, or why this
/// engine cannot use it. `policy` is the object's name, `field` the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CnpError {
    #[error("ClusterNetworkPolicy {policy}: {field}: Required value")]
    Required { policy: String, field: String },
    #[error("ClusterNetworkPolicy {policy}: {field}: Unsupported value {value:?}: supported values: {supported}")]
    Unsupported {
        policy: String,
        field: String,
        value: String,
        supported: &'static str,
    },
    #[error("ClusterNetworkPolicy {policy}: {field}: Invalid value {value}: must be between {min} and {max}")]
    OutOfRange {
        policy: String,
        field: String,
        value: i64,
        min: i64,
        max: i64,
    },
    #[error("ClusterNetworkPolicy {policy}: {field}: must have exactly one of {choices} set, found {found}")]
    ExactlyOne {
        policy: String,
        field: String,
        choices: &'static str,
        found: usize,
    },
    #[error(
        "ClusterNetworkPolicy {policy}: {field}: Too many: {found}: must have at most {max} items"
    )]
    TooMany {
        policy: String,
        field: String,
        found: usize,
        max: usize,
    },
    #[error(
        "ClusterNetworkPolicy {policy}: {field}: Invalid value: must have at least {min} items"
    )]
    TooFew {
        policy: String,
        field: String,
        min: usize,
    },
    #[error("ClusterNetworkPolicy {policy}: {field}: Too long: may not be more than {max} bytes")]
    TooLong {
        policy: String,
        field: String,
        max: usize,
    },
    #[error("ClusterNetworkPolicy {policy}: {field}: Duplicate value: {value:?}")]
    Duplicate {
        policy: String,
        field: String,
        value: String,
    },
    #[error("ClusterNetworkPolicy {policy}: {field}: Unknown field")]
    UnknownField { policy: String, field: String },
    /// A CEL rule, a pattern or a format the value breaks; `reason` is the CRD's message.
    #[error("ClusterNetworkPolicy {policy}: {field}: Invalid value: {reason}")]
    Invalid {
        policy: String,
        field: String,
        reason: String,
    },
}

impl CnpError {
    pub fn policy(&self) -> &str {
        match self {
            CnpError::Required { policy, .. }
            | CnpError::Unsupported { policy, .. }
            | CnpError::OutOfRange { policy, .. }
            | CnpError::ExactlyOne { policy, .. }
            | CnpError::TooMany { policy, .. }
            | CnpError::TooFew { policy, .. }
            | CnpError::TooLong { policy, .. }
            | CnpError::Duplicate { policy, .. }
            | CnpError::UnknownField { policy, .. }
            | CnpError::Invalid { policy, .. } => policy,
        }
    }

    pub fn field(&self) -> &str {
        match self {
            CnpError::Required { field, .. }
            | CnpError::Unsupported { field, .. }
            | CnpError::OutOfRange { field, .. }
            | CnpError::ExactlyOne { field, .. }
            | CnpError::TooMany { field, .. }
            | CnpError::TooFew { field, .. }
            | CnpError::TooLong { field, .. }
            | CnpError::Duplicate { field, .. }
            | CnpError::UnknownField { field, .. }
            | CnpError::Invalid { field, .. } => field,
        }
    }

    /// The crate's generic object error, for `lint` and the loaders' reports.
    pub fn to_object_error(&self, source: Option<&str>) -> ObjectError {
        let full = self.to_string();
        let prefix = format!("ClusterNetworkPolicy {}: {}: ", self.policy(), self.field());
        let message = full.strip_prefix(&prefix).unwrap_or(&full).to_string();
        ObjectError {
            object: Box::new(ObjectRef {
                kind: super::KIND.to_string(),
                namespace: None,
                name: self.policy().to_string(),
                source: source.map(str::to_string),
            }),
            field: self.field().to_string(),
            message,
        }
    }
}
