//! The `portcullis.dev/exemptions` annotation: every exemption from enforcement in force for a
//! pod, written by the injector so that anyone (the controller, `portcullis` CLI, an auditor
//! with `kubectl get pods -o yaml`) can see it. A contract between components:
//!
//! - items separated by `;`, each `name` or `name=value`, in this order;
//! - names: `not-injected`, `audit-mode`, `skip-inbound-ports=LIST`, `skip-outbound-ports=LIST`,
//!   `skip-outbound-cidrs=LIST` (LIST as in the annotation of the same name, `,`-separated),
//!   `udp-not-enforced`, `egress-not-enforceable=REASONS` (`,`-separated: `NET_ADMIN`,
//!   `NET_RAW`, `privileged`);
//! - no annotation: no exemption. The injector removes one a pod author wrote.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exemption {
    NotInjected,
    AuditMode,
    SkipInboundPorts(String),
    SkipOutboundPorts(String),
    SkipOutboundCidrs(String),
    UdpNotEnforced,
    EgressNotEnforceable(Vec<&'static str>),
}

impl fmt::Display for Exemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exemption::NotInjected => f.write_str("not-injected"),
            Exemption::AuditMode => f.write_str("audit-mode"),
            Exemption::SkipInboundPorts(l) => write!(f, "skip-inbound-ports={l}"),
            Exemption::SkipOutboundPorts(l) => write!(f, "skip-outbound-ports={l}"),
            Exemption::SkipOutboundCidrs(l) => write!(f, "skip-outbound-cidrs={l}"),
            Exemption::UdpNotEnforced => f.write_str("udp-not-enforced"),
            Exemption::EgressNotEnforceable(r) => {
                write!(f, "egress-not-enforceable={}", r.join(","))
            }
        }
    }
}

/// The annotation's value, or `None` for no exemption.
pub fn render(list: &[Exemption]) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    Some(
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(";"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering() {
        assert_eq!(render(&[]), None);
        assert_eq!(
            render(&[Exemption::NotInjected]).as_deref(),
            Some("not-injected")
        );
        assert_eq!(
            render(&[
                Exemption::AuditMode,
                Exemption::SkipInboundPorts("22,8000-8100".into()),
                Exemption::SkipOutboundCidrs("10.0.0.0/8,fd00::/8".into()),
                Exemption::UdpNotEnforced,
                Exemption::EgressNotEnforceable(vec!["NET_RAW", "privileged"]),
            ])
            .as_deref(),
            Some("audit-mode;skip-inbound-ports=22,8000-8100;skip-outbound-cidrs=10.0.0.0/8,fd00::/8;udp-not-enforced;egress-not-enforceable=NET_RAW,privileged")
        );
    }
}
