//! NetworkPolicy objects → validated, normalised policies, with the API server's rules: what it
//! would reject is reported (object, field, reason) and left out; what it would default is
//! defaulted here the same way.

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{ObjectError, ObjectRef};
use crate::ports::{PortRange, Protocol};
use crate::selector::Selector;
use crate::verdict::Direction;

#[derive(Debug, Clone)]
pub struct ValidPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// Effective policyTypes: as written, or inferred when absent.
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Annotated `portcullis.dev/staged: "true"`: compiled beside the enforced policies, never
    /// enforced ([`crate::staged`]).
    pub staged: bool,
}

impl ValidPolicy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }
}

/// One ingress or egress rule. `None` means the list was absent or empty, which matches all.
#[derive(Debug, Clone)]
pub struct Rule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Debug, Clone)]
pub enum Peer {
    /// Pods chosen by labels. `namespaces: None` means the policy's own namespace;
    /// `pods: None` means every pod of the chosen namespaces.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    Block {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// A number, a range (endPort), or every port of the protocol.
    Numeric(PortRange),
    /// A container port name, resolved against the destination pod.
    Named { name: String, protocol: Protocol },
}

/// Validates one NetworkPolicy; any error rejects the whole object, as the API server would.
/// The first error only: [`validate_policy_all`] gives every one.
pub fn validate_policy(
    np: &NetworkPolicy,
    source: Option<&str>,
) -> Result<ValidPolicy, ObjectError> {
    validate_policy_all(np, source).map_err(|e| e.first)
}

/// Every error of one invalid NetworkPolicy, in field order (the API server reports them all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{first}")]
pub struct PolicyErrors {
    pub first: ObjectError,
    pub rest: Vec<ObjectError>,
}

impl PolicyErrors {
    pub fn all(&self) -> impl Iterator<Item = &ObjectError> {
        std::iter::once(&self.first).chain(&self.rest)
    }
}

/// As [`validate_policy`], with every error of the object instead of the first.
pub fn validate_policy_all(
    np: &NetworkPolicy,
    source: Option<&str>,
) -> Result<ValidPolicy, PolicyErrors> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let object = ObjectRef {
        kind: "NetworkPolicy".into(),
        namespace: Some(namespace.clone()),
        name: name.clone(),
        source: source.map(str::to_string),
    };
    let mut errors: Vec<FieldError> = Vec::new();
    if name.is_empty() {
        errors.push(("metadata.name".into(), "is required".into()));
    }
    let valid = match &np.spec {
        Some(spec) => validate_spec(spec, namespace, name, &mut errors),
        None => {
            errors.push(("spec".into(), "is required".into()));
            None
        }
    };
    let mut errors = errors.into_iter().map(|(field, message)| ObjectError {
        object: Box::new(object.clone()),
        field,
        message,
    });
    match (valid, errors.next()) {
        (Some(valid), None) => Ok(ValidPolicy {
            staged: crate::staged::is_staged(np.metadata.annotations.as_ref()),
            ..valid
        }),
        (_, Some(first)) => Err(PolicyErrors {
            first,
            rest: errors.collect(),
        }),
        // validate_spec gives no policy only with an error.
        (None, None) => Err(PolicyErrors {
            first: ObjectError {
                object: Box::new(object),
                field: "spec".into(),
                message: "is invalid".into(),
            },
            rest: Vec::new(),
        }),
    }
}

/// `errors` (a compile's, which holds the first error of each invalid policy) with each policy's
/// first error followed by its others, so that a user sees every error of an object at once.
pub fn with_every_policy_error(
    policies: &[crate::cluster::SourcedPolicy],
    errors: &[ObjectError],
) -> Vec<ObjectError> {
    let invalid: Vec<PolicyErrors> = policies
        .iter()
        .filter_map(|sp| validate_policy_all(&sp.policy, sp.source.as_deref()).err())
        .filter(|e| !e.rest.is_empty())
        .collect();
    let mut out = Vec::with_capacity(errors.len());
    for e in errors {
        match invalid.iter().find(|all| all.first == *e) {
            Some(all) => out.extend(all.all().cloned()),
            None => out.push(e.clone()),
        }
    }
    out
}

/// The spec's parts, each error added to `errors`; the policy when there was none.
fn validate_spec(
    spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec,
    namespace: String,
    name: String,
    errors: &mut Vec<FieldError>,
) -> Option<ValidPolicy> {
    let before = errors.len();
    let pod_selector = match &spec.pod_selector {
        Some(sel) => Selector::parse(sel, "spec.podSelector").unwrap_or_else(|e| {
            errors.push(e);
            Selector::everything()
        }),
        None => Selector::everything(),
    };

    let ingress_rules = spec.ingress.as_deref().unwrap_or(&[]);
    let egress_rules = spec.egress.as_deref().unwrap_or(&[]);
    let (isolates_ingress, isolates_egress) =
        isolation(spec.policy_types.as_deref(), !egress_rules.is_empty()).unwrap_or_else(|e| {
            errors.push(e);
            (true, false)
        });

    let mut ingress = Vec::with_capacity(ingress_rules.len());
    for (i, r) in ingress_rules.iter().enumerate() {
        let field = format!("spec.ingress[{i}]");
        let rule = validate_rule(
            r.from.as_deref(),
            r.ports.as_deref(),
            &field,
            "from",
            errors,
        );
        ingress.push(rule);
    }
    let mut egress = Vec::with_capacity(egress_rules.len());
    for (i, r) in egress_rules.iter().enumerate() {
        let field = format!("spec.egress[{i}]");
        egress.push(validate_rule(
            r.to.as_deref(),
            r.ports.as_deref(),
            &field,
            "to",
            errors,
        ));
    }
    (errors.len() == before).then_some(ValidPolicy {
        namespace,
        name,
        pod_selector,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
        staged: false,
    })
}

type FieldError = (String, String);

/// Which directions a policy isolates: `(ingress, egress)`, from `spec.policyTypes`.
fn isolation(types: Option<&[String]>, has_egress_rules: bool) -> Result<(bool, bool), FieldError> {
    match types {
        // The API server defaults an absent (or empty) list: Ingress always, Egress only when
        // there are egress rules.
        None | Some([]) => Ok((true, has_egress_rules)),
        Some(types) => {
            let mut ingress = false;
            let mut egress = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        return Err((
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                        ))
                    }
                }
            }
            Ok((ingress, egress))
        }
    }
}

/// One rule; each invalid peer or port is added to `errors` and left out.
fn validate_rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    field: &str,
    peers_name: &str,
    errors: &mut Vec<FieldError>,
) -> Rule {
    let mut keep = |r: Result<_, FieldError>| r.map_err(|e| errors.push(e)).ok();
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| keep(validate_peer(p, &format!("{field}.{peers_name}[{i}]"))))
                .collect(),
        ),
    };
    let mut keep = |r: Result<_, FieldError>| r.map_err(|e| errors.push(e)).ok();
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| keep(validate_port(p, &format!("{field}.ports[{i}]"))))
                .collect(),
        ),
    };
    Rule { peers, ports }
}

fn validate_peer(peer: &NetworkPolicyPeer, field: &str) -> Result<Peer, FieldError> {
    let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match &peer.ip_block {
        Some(_) if has_selector => Err((
            field.to_string(),
            "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
        )),
        Some(block) => {
            let cidr = parse_cidr(&block.cidr, &format!("{field}.ipBlock.cidr"))?;
            let mut except = Vec::new();
            for (i, e) in block.except.iter().flatten().enumerate() {
                let here = format!("{field}.ipBlock.except[{i}]");
                let net = parse_cidr(e, &here)?;
                let inside = match (cidr, net) {
                    (IpNet::V4(c), IpNet::V4(n)) => {
                        c.contains(&n) && n.prefix_len() > c.prefix_len()
                    }
                    (IpNet::V6(c), IpNet::V6(n)) => {
                        c.contains(&n) && n.prefix_len() > c.prefix_len()
                    }
                    _ => false,
                };
                if !inside {
                    return Err((
                        here,
                        format!("{e:?} must be a strict subset of cidr {:?}", block.cidr),
                    ));
                }
                except.push(net);
            }
            Ok(Peer::Block { cidr, except })
        }
        None if !has_selector => Err((
            field.to_string(),
            "a peer needs podSelector, namespaceSelector or ipBlock".into(),
        )),
        None => {
            let namespaces = peer
                .namespace_selector
                .as_ref()
                .map(|s| Selector::parse(s, &format!("{field}.namespaceSelector")))
                .transpose()?;
            let pods = peer
                .pod_selector
                .as_ref()
                .map(|s| Selector::parse(s, &format!("{field}.podSelector")))
                .transpose()?;
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn parse_cidr(s: &str, field: &str) -> Result<IpNet, FieldError> {
    // The API accepts host bits set ("10.0.0.1/24") and means the network.
    s.trim().parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
        (
            field.to_string(),
            format!("invalid CIDR {s:?} (expected e.g. 10.0.0.0/16 or fd00::/64)"),
        )
    })
}

fn validate_port(p: &NetworkPolicyPort, field: &str) -> Result<PortSpec, FieldError> {
    let protocol = match &p.protocol {
        Some(s) => {
            // The API is case-sensitive here.
            match s.as_str() {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                other => {
                    return Err((
                        format!("{field}.protocol"),
                        format!("unsupported protocol {other:?} (expected TCP, UDP or SCTP)"),
                    ))
                }
            }
        }
        None => Protocol::Tcp,
    };
    let end_port = p.end_port;
    match &p.port {
        None => {
            if end_port.is_some() {
                return Err((
                    format!("{field}.endPort"),
                    "endPort requires port to be set".into(),
                ));
            }
            Ok(PortSpec::Numeric(PortRange::all(protocol)))
        }
        Some(IntOrString::Int(n)) => {
            let first = port_number(*n, &format!("{field}.port"))?;
            let last = match end_port {
                None => first,
                Some(e) => {
                    let last = port_number(e, &format!("{field}.endPort"))?;
                    if last < first {
                        return Err((
                            format!("{field}.endPort"),
                            format!("endPort {last} must be greater than or equal to port {first}"),
                        ));
                    }
                    last
                }
            };
            Ok(PortSpec::Numeric(PortRange {
                protocol,
                first,
                last,
            }))
        }
        Some(IntOrString::String(name)) => {
            if end_port.is_some() {
                return Err((
                    format!("{field}.endPort"),
                    format!("endPort cannot be used with a named port ({name:?})"),
                ));
            }
            validate_port_name(name).map_err(|e| (format!("{field}.port"), e.to_string()))?;
            Ok(PortSpec::Named {
                name: name.clone(),
                protocol,
            })
        }
    }
}

fn port_number(n: i32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(n).ok().filter(|p| *p >= 1).ok_or_else(|| {
        (
            field.to_string(),
            format!("{n} is not a port number (1-65535)"),
        )
    })
}

/// A named port that breaks the IANA service name rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is neither a port number nor a valid port name (1-15 lowercase letters, digits and \
     '-', with at least one letter)"
)]
pub struct InvalidPortName(pub String);

/// IANA service name rules, which Kubernetes applies to port names.
fn validate_port_name(name: &str) -> Result<(), InvalidPortName> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(InvalidPortName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn every_error_of_a_policy_is_reported_in_field_order() {
        let e = validate_policy_all(
            &policy(&format!(
                "{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Ingres]\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.0/33}}\n    - {{}}\n    ports: [{{port: 0}}, {{port: 80, protocol: tcp}}]\n  egress:\n  - ports: [{{port: Bad_Name}}]\n"
            )),
            Some("p.yaml"),
        )
        .unwrap_err();
        let fields: Vec<&str> = e.all().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.policyTypes[0]",
                "spec.ingress[0].from[0].ipBlock.cidr",
                "spec.ingress[0].from[1]",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].ports[1].protocol",
                "spec.egress[0].ports[0].port",
            ]
        );
        assert!(e
            .all()
            .all(|e| e.to_string().starts_with("NetworkPolicy x/np (in p.yaml)")));
        // The single-error form keeps the first.
        assert_eq!(
            validate_policy(&policy(&format!("{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Ingres]\n  egress: [{{ports: [{{port: 0}}]}}]\n")), None)
                .unwrap_err()
                .field,
            "spec.policyTypes[0]"
        );
    }

    fn err(yaml: &str) -> ObjectError {
        validate_policy(&policy(yaml), Some("p.yaml")).unwrap_err()
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\n";

    #[test]
    fn policy_types_inferred_from_rules() {
        let p = validate_policy(
            &policy(&format!("{HEAD}spec:\n  podSelector: {{}}\n")),
            None,
        )
        .unwrap();
        assert!(p.isolates_ingress && !p.isolates_egress);
        let p = validate_policy(
            &policy(&format!(
                "{HEAD}spec:\n  podSelector: {{}}\n  egress: [{{}}]\n"
            )),
            None,
        )
        .unwrap();
        assert!(p.isolates_ingress && p.isolates_egress);
        // An empty egress list does not make the pod egress-isolated.
        let p = validate_policy(
            &policy(&format!("{HEAD}spec:\n  podSelector: {{}}\n  egress: []\n")),
            None,
        )
        .unwrap();
        assert!(!p.isolates_egress);
        let p = validate_policy(
            &policy(&format!(
                "{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
            )),
            None,
        )
        .unwrap();
        assert!(!p.isolates_ingress && p.isolates_egress);
    }

    #[test]
    fn invalid_fields_are_named() {
        let e = err(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.0/33}}\n"
        ));
        assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.cidr");
        assert!(
            e.to_string().contains("NetworkPolicy x/np (in p.yaml)"),
            "{e}"
        );

        let e = err(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}\n"
        ));
        assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.except[0]");

        let e = err(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  egress:\n  - ports:\n    - {{port: 90, endPort: 80}}\n"
        ));
        assert_eq!(e.field, "spec.egress[0].ports[0].endPort");

        let e = err(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  egress:\n  - ports:\n    - {{port: http, endPort: 80}}\n"
        ));
        assert_eq!(e.field, "spec.egress[0].ports[0].endPort");
        assert!(e.message.contains("named port"));

        let e = err(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - {{port: 80, protocol: ICMP}}\n"
        ));
        assert_eq!(e.field, "spec.ingress[0].ports[0].protocol");

        let e = err(&format!(
            "{HEAD}spec:\n  podSelector:\n    matchExpressions: [{{key: a, operator: Equals, values: [b]}}]\n"
        ));
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].operator");

        let e = err(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.0/8}}\n      podSelector: {{}}\n"
        ));
        assert_eq!(e.field, "spec.ingress[0].from[0]");

        let e = err(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  policyTypes: [Inbound]\n"
        ));
        assert_eq!(e.field, "spec.policyTypes[0]");
    }

    #[test]
    fn ports_normalise() {
        let p = validate_policy(
            &policy(&format!(
                "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: 80\n    - {{protocol: UDP}}\n    - {{port: 1000, endPort: 2000, protocol: SCTP}}\n    - {{port: dns, protocol: UDP}}\n"
            )),
            None,
        )
        .unwrap();
        let ports = p.ingress[0].ports.clone().unwrap();
        assert_eq!(
            ports[0],
            PortSpec::Numeric(PortRange::single(Protocol::Tcp, 80))
        );
        assert_eq!(ports[1], PortSpec::Numeric(PortRange::all(Protocol::Udp)));
        assert_eq!(
            ports[2],
            PortSpec::Numeric(PortRange {
                protocol: Protocol::Sctp,
                first: 1000,
                last: 2000
            })
        );
        assert_eq!(
            ports[3],
            PortSpec::Named {
                name: "dns".into(),
                protocol: Protocol::Udp
            }
        );
    }

    #[test]
    fn host_bits_in_cidr_are_accepted() {
        let p = validate_policy(
            &policy(&format!(
                "{HEAD}spec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 10.0.0.1/24}}\n"
            )),
            None,
        )
        .unwrap();
        match &p.ingress[0].peers.as_ref().unwrap()[0] {
            Peer::Block { cidr, .. } => assert_eq!(cidr.to_string(), "10.0.0.0/24"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
