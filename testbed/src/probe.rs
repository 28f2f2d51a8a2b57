//! `testbed probe`: connects from every pod to every pod on every probe, and predicts each
//! connection from the compiled tables of the manifests the proxies see.
//!
//! The prediction is the policy engine's, applied as this testbed enforces it: a pod without
//! Portcullis (see `inject.rs`) enforces neither its egress nor its ingress, while its peers'
//! proxies still enforce theirs. A probe to a port where the target's server does not listen
//! (it could not bind it) is not sent: it is reported as `no_listener`, apart from denials.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::{Error, Result};
use portcullis_policy::matrix::Probe;
use portcullis_policy::service::ResolvedPort;
use portcullis_policy::{
    CompiledCluster, Direction, Matrix, PodTable, ProbeResult, Protocol, Verdict,
};
use serde::Serialize;

use crate::serve::{self, NoAnswer};
use crate::{netns, Family, PodState, Snapshot, State};

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The target answered with its identity.
    Answered,
    /// Nothing answered: refused, reset, closed or timed out (see `no_answer`).
    NoAnswer,
    /// Another pod than the target answered: traffic went somewhere it should not.
    WrongPod,
    /// The target's server does not listen on that port; nothing was sent.
    NoListener,
}

/// One probe, observed and predicted.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The address family probed: a dual-stack pair is probed over each.
    pub family: Family,
    /// Observed: whether an answer came back; `null` when nothing listens there.
    pub allowed: Option<bool>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<NoAnswer>,
    pub predicted: bool,
    /// Why the prediction is what it is.
    pub reason: String,
    /// Why nothing listens, when nothing does (the server's bind error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_listener: Option<String>,
}

impl Cell {
    /// Whether what was observed contradicts the prediction. A probe where nothing listens
    /// proves nothing either way and is reported apart.
    pub fn differs(&self) -> bool {
        match self.outcome {
            Outcome::Answered => !self.predicted,
            Outcome::NoAnswer => self.predicted,
            Outcome::WrongPod => true,
            Outcome::NoListener => false,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let observed = match self.outcome {
            Outcome::Answered => "allowed".to_string(),
            Outcome::NoAnswer => format!(
                "denied ({})",
                self.no_answer.map(|n| n.to_string()).unwrap_or_default()
            ),
            Outcome::WrongPod => {
                format!("answered by {}", self.answered_by.as_deref().unwrap_or("?"))
            }
            Outcome::NoListener => "nothing listens there".to_string(),
        };
        format!(
            "{} -> {} on {}/{} over {}: observed {observed}, predicted {} ({})",
            self.from,
            self.to,
            self.port,
            self.protocol,
            self.family,
            if self.predicted { "allowed" } else { "denied" },
            self.reason
        )
    }
}

/// The observed matrix (cells where something listens) and the predicted one of `family`, for
/// grids.
pub fn matrices(cells: &[Cell], family: Family) -> (Matrix, Matrix) {
    let cells: Vec<&Cell> = cells.iter().filter(|c| c.family == family).collect();
    let result = |c: &&Cell, allowed: bool| ProbeResult {
        from: c.from.clone(),
        to: c.to.clone(),
        port: c.port,
        protocol: c.protocol,
        allowed,
        reason: Some(c.reason.clone()),
        staged: None,
    };
    let observed = cells
        .iter()
        .filter_map(|c| c.allowed.map(|a| result(c, a)))
        .collect();
    let predicted = cells.iter().map(|c| result(c, c.predicted)).collect();
    (Matrix { probes: observed }, Matrix { probes: predicted })
}

/// One half of a prediction: the pod's own verdict, if its proxy enforces it.
fn half(
    pod: &PodState,
    table: Option<&PodTable>,
    direction: Direction,
    peer: IpAddr,
    probe: Probe,
) -> (bool, String) {
    if !pod.injected {
        return (
            true,
            format!("{direction} not enforced: {} has no proxy", pod.key),
        );
    }
    if probe.protocol != Protocol::Tcp && !pod.enforces_udp {
        return (
            true,
            format!(
                "{direction} not enforced: the proxy of {} does not enforce {} (up --enforce-udp false)",
                pod.key, probe.protocol
            ),
        );
    }
    match table {
        Some(t) => {
            let v: Verdict = t.check(direction, peer, probe.port, probe.protocol);
            (v.allowed(), format!("{direction} {v}"))
        }
        None => (false, format!("{direction}: {} has no table", pod.key)),
    }
}

/// The expected verdict of `from` → `to` on `probe`, and why.
/// Over `family`: each side is judged on the other's address of that family (the IPv4 ones
/// when one of them has none).
pub fn predict(
    compiled: &CompiledCluster,
    from: &PodState,
    to: &PodState,
    probe: Probe,
    family: Family,
) -> (bool, String) {
    let table = |p: &PodState| compiled.table(&p.key).map(|t| &**t);
    let (from_ip, to_ip) = match (from.addr(family), to.addr(family)) {
        (Some(f), Some(t)) => (f, t),
        _ => (from.ip, to.ip),
    };
    let (e_ok, e_why) = half(from, table(from), Direction::Egress, to_ip, probe);
    let (i_ok, i_why) = half(to, table(to), Direction::Ingress, from_ip, probe);
    let why = match (e_ok, i_ok) {
        (true, false) => i_why,
        (false, true) => e_why,
        _ => format!("{e_why}; {i_why}"),
    };
    (e_ok && i_ok, why)
}

/// Probes from every pod to every pod on every probe, in parallel per source pod: over IPv4,
/// and over IPv6 too between two pods that both have an IPv6 address.
pub fn observe(state: &State, probes: &[Probe], timeout: Duration) -> Result<Vec<Cell>> {
    state.ensure_served(probes)?;
    let compiled = state.snapshot()?.compiled;
    let pods: Vec<&PodState> = state.pods.iter().filter(|p| !p.system).collect();
    let mut groups = Vec::new();
    for from in &pods {
        let mut mine = Vec::new();
        for (pi, &probe) in probes.iter().enumerate() {
            for to in &pods {
                for family in [Family::IPv4, Family::IPv6] {
                    if from.addr(family).is_some() && to.addr(family).is_some() {
                        mine.push((pi, plan(&compiled, from, to, probe, family)));
                    }
                }
            }
        }
        groups.push((from.netns.clone(), mine));
    }
    let mut cells = in_pods(groups, move |(pi, (cell, target))| {
        (pi, send(cell, target, timeout))
    })?;
    // Same order as the engine's matrix: family, probe, then from, then to.
    cells.sort_by(|(a, x), (b, y)| {
        (x.family, a, &x.from, &x.to).cmp(&(y.family, b, &y.from, &y.to))
    });
    Ok(cells.into_iter().map(|(_, c)| c).collect())
}

/// How many probes of `cells` were sent over each family (those where something listened).
pub fn per_family(cells: &[Cell]) -> Vec<(Family, usize)> {
    [Family::IPv4, Family::IPv6]
        .into_iter()
        .map(|f| {
            let sent = cells
                .iter()
                .filter(|c| c.family == f && c.allowed.is_some());
            (f, sent.count())
        })
        .collect()
}

/// The cell of one probe, predicted, and where to send it (`None`: nothing listens there).
fn plan(
    compiled: &CompiledCluster,
    from: &PodState,
    to: &PodState,
    probe: Probe,
    family: Family,
) -> (Cell, Option<SocketAddr>) {
    let (predicted, reason) = predict(compiled, from, to, probe, family);
    let bound = to.bound();
    let no_listener = (!bound.listening.contains(&probe)).then(|| {
        bound
            .failed
            .iter()
            .find(|(p, _)| *p == probe)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| "not served".into())
    });
    let target = no_listener
        .is_none()
        .then(|| SocketAddr::new(to.addr(family).unwrap_or(to.ip), probe.port));
    let cell = Cell {
        from: from.key.clone(),
        to: to.key.clone(),
        port: probe.port,
        protocol: probe.protocol,
        family,
        allowed: None,
        outcome: Outcome::NoListener,
        answered_by: None,
        no_answer: None,
        predicted,
        reason,
        no_listener,
    };
    (cell, target)
}

/// Sends one planned probe (from inside the source pod) and records what came back.
fn send(mut cell: Cell, target: Option<SocketAddr>, timeout: Duration) -> Cell {
    let Some(addr) = target else {
        return cell;
    };
    match serve::probe(addr, cell.protocol, timeout) {
        Ok(id) if id == cell.to => {
            cell.outcome = Outcome::Answered;
            cell.allowed = Some(true);
        }
        Ok(id) => {
            cell.outcome = Outcome::WrongPod;
            cell.allowed = Some(true);
            cell.answered_by = Some(id);
        }
        Err(why) => {
            cell.outcome = Outcome::NoAnswer;
            cell.allowed = Some(false);
            cell.no_answer = Some(why);
        }
    }
    cell
}

/// At most this many probes at once from one pod: a denied UDP probe waits for the whole
/// timeout, so one at a time would make a matrix take (denied cells × timeout).
const PARALLEL_PER_POD: usize = 16;

/// Runs `f` on every item of each group inside the group's network namespace (a source pod):
/// up to [`PARALLEL_PER_POD`] threads per group, each entering the namespace. The results come
/// back in no particular order (callers sort them).
fn in_pods<T: Send + 'static, U: Send + 'static>(
    groups: Vec<(String, Vec<T>)>,
    f: impl Fn(T) -> U + Send + Copy + 'static,
) -> Result<Vec<U>> {
    let mut handles = Vec::new();
    for (ns, items) in groups {
        let workers = items.len().min(PARALLEL_PER_POD);
        let mut shares: Vec<Vec<T>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, item) in items.into_iter().enumerate() {
            shares[i % workers].push(item);
        }
        for share in shares {
            let ns = ns.clone();
            handles.push(std::thread::spawn(move || -> Result<Vec<U>> {
                netns::enter(&ns)?;
                Ok(share.into_iter().map(f).collect())
            }));
        }
    }
    let mut out = Vec::new();
    for h in handles {
        out.extend(h.join().map_err(|_| Error::Panicked("probe"))??);
    }
    Ok(out)
}

/// Which pods probe Services (by default every pod: a proxy balances TCP connections to a
/// ClusterIP itself and judges UDP/SCTP flows on every backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceClients {
    /// Every pod.
    All,
    /// Pods without portcullis-proxy only (their connections reach the node's kube-proxy rules).
    Unenforced,
    /// No Service probes.
    None,
}

/// Why a pod does not reach itself through its own Service in the testbed.
pub const HAIRPIN: &str =
    "testbed limitation: a pod reaching itself through its Service (hairpin) is dropped by the node";

/// What the policy says about a connection through a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServicePrediction {
    /// Every backend it may land on lets it through.
    Allowed,
    /// Some backends do, some do not: an answer must come from one that does.
    Partly,
    /// None does (or no endpoint is ready).
    Denied,
}

/// One probe of a Service port from one pod: which backend answered, and which were allowed.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCell {
    pub from: String,
    /// `namespace/name` of the Service.
    pub service: String,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<NoAnswer>,
    pub predicted: ServicePrediction,
    /// Backends (pods, or IPs) the connection may reach, and those it may not, with why.
    pub allowed_backends: Vec<String>,
    pub denied_backends: Vec<(String, String)>,
}

impl ServiceCell {
    /// An answer must come from an allowed backend (reaching a denied one is a failure even
    /// though the client got an answer); no answer is wrong only if every backend is allowed.
    pub fn differs(&self) -> bool {
        match self.outcome {
            Outcome::Answered | Outcome::WrongPod => !self
                .answered_by
                .as_ref()
                .is_some_and(|b| self.allowed_backends.contains(b)),
            Outcome::NoAnswer => self.predicted == ServicePrediction::Allowed,
            Outcome::NoListener => false,
        }
    }

    pub fn column(&self) -> String {
        let v6 = if self.cluster_ip.is_ipv6() {
            " (IPv6)"
        } else {
            ""
        };
        format!("{}:{}/{}{v6}", self.service, self.port, self.protocol)
    }

    pub fn describe(&self) -> String {
        let observed = match (&self.answered_by, self.no_answer) {
            (Some(b), _) => format!("answered by {b}"),
            (None, Some(n)) => format!("no answer ({n})"),
            (None, None) => "not probed".into(),
        };
        let denied: Vec<String> = self
            .denied_backends
            .iter()
            .map(|(b, why)| format!("{b}: {why}"))
            .collect();
        format!(
            "{} -> Service {} ({}:{}/{}): observed {observed}; allowed backends [{}]; denied [{}]",
            self.from,
            self.service,
            self.cluster_ip,
            self.port,
            self.protocol,
            self.allowed_backends.join(", "),
            denied.join("; ")
        )
    }
}

/// Predicts a connection from `from` to a Service port: each candidate backend (ready
/// endpoints, as kube-proxy picks them) is judged on its own IP and target port, by the client's
/// egress (if it has a proxy) and the backend's ingress (if it has one).
///
/// Who picks the backend decides which ones it may land on:
/// - a TCP connection from a pod whose proxy enforces it: the proxy balances over the backends
///   its egress allows and connects to one itself (kube-proxy is not involved), so it never lands
///   on an egress-denied backend, and a pod reaching itself through its Service is a connection
///   to itself (always allowed);
/// - a UDP/SCTP flow from a pod whose proxy enforces it: the proxy accepts the first datagram
///   only when its egress allows every backend (kube-proxy then picks any of them), else drops it;
/// - a pod without a proxy: kube-proxy picks any ready backend; reaching itself is dropped by the
///   testbed's node, see [`HAIRPIN`].
fn predict_service(
    snapshot: &Snapshot,
    state: &State,
    from: &PodState,
    port: &ResolvedPort,
    family: Family,
) -> (ServicePrediction, Vec<String>, Vec<(String, String)>) {
    let table = |p: &PodState| snapshot.compiled.table(&p.key).map(|t| &**t);
    // A ClusterIP leads to the endpoints of its own family only (kube-proxy, and the proxy).
    let from_ip = from.addr(family).unwrap_or(from.ip);
    // (name, probe on the backend, its pod, egress allows it, why)
    let judged: Vec<_> = port
        .candidates()
        .filter(|b| Family::of(b.ip) == family)
        .map(|b| {
            let probe = Probe {
                port: b.port,
                protocol: port.protocol,
            };
            let (e_ok, e_why) = half(from, table(from), Direction::Egress, b.ip, probe);
            let name = b.pod.clone().unwrap_or_else(|| b.ip.to_string());
            (name, probe, b.pod.as_deref(), e_ok, e_why)
        })
        .collect();
    let enforced = from.injected && (port.protocol == Protocol::Tcp || from.enforces_udp);
    let proxy_balances = enforced && port.protocol == Protocol::Tcp;
    // Egress-allowed backends are the only ones a proxy that balances may land on; a proxy
    // judging a datagram needs them all.
    let all_egress_ok = judged.iter().all(|j| j.3);
    let mut allowed = Vec::new();
    // Backends it may land on and get no answer from, then those it never goes to.
    let mut landable_denied = Vec::new();
    let mut never = Vec::new();
    for (name, probe, pod, e_ok, e_why) in judged {
        if !e_ok {
            never.push((name, e_why));
            continue;
        }
        if enforced && !proxy_balances && !all_egress_ok {
            never.push((
                name,
                format!(
                    "the client's proxy drops a {} flow to a ClusterIP unless its egress allows every backend",
                    port.protocol
                ),
            ));
            continue;
        }
        if pod == Some(from.key.as_str()) {
            if proxy_balances {
                // The proxy connects to its own pod's address: traffic to itself.
                allowed.push(name);
            } else {
                // kube-proxy masquerades this hairpin; in the testbed's routed node the DNAT'd
                // packet (source = destination) is dropped before it can be (see services.rs).
                landable_denied.push((name, HAIRPIN.to_string()));
            }
            continue;
        }
        let (i_ok, i_why) = match state.pods.iter().find(|p| Some(p.key.as_str()) == pod) {
            Some(backend) => half(backend, table(backend), Direction::Ingress, from_ip, probe),
            None => (true, "not a testbed pod".to_string()),
        };
        if i_ok {
            allowed.push(name);
        } else {
            landable_denied.push((name, i_why));
        }
    }
    let prediction = match (allowed.is_empty(), landable_denied.is_empty()) {
        (false, true) => ServicePrediction::Allowed,
        (false, false) => ServicePrediction::Partly,
        (true, _) => ServicePrediction::Denied,
    };
    landable_denied.extend(never);
    (prediction, allowed, landable_denied)
}

/// Probes every Service port of `protocols` from every chosen client pod: on each ClusterIP
/// (IPv4, and IPv6 from the pods that have an IPv6 address).
/// `skip`: Services not to probe (e.g. the cluster DNS, which does not answer with a name).
pub fn observe_services(
    state: &State,
    protocols: &BTreeSet<Protocol>,
    clients: ServiceClients,
    skip: &[&str],
    timeout: Duration,
) -> Result<Vec<ServiceCell>> {
    let snapshot = state.snapshot()?;
    let mut groups = Vec::new();
    for from in &state.pods {
        let client = match clients {
            ServiceClients::All => true,
            ServiceClients::Unenforced => !from.injected,
            ServiceClients::None => false,
        };
        if !client || from.system {
            continue;
        }
        let mut mine = Vec::new();
        for (key, svc) in &snapshot.services.services {
            if skip.contains(&key.as_str()) {
                continue;
            }
            let reachable = |ip: &&IpAddr| from.addr(Family::of(**ip)).is_some();
            for &ip in svc.cluster_ips.iter().filter(reachable) {
                for port in svc.ports.iter().filter(|p| protocols.contains(&p.protocol)) {
                    mine.push(service_cell(&snapshot, state, from, key, ip, port));
                }
            }
        }
        groups.push((from.netns.clone(), mine));
    }
    let mut cells = in_pods(groups, move |cell| send_service(cell, timeout))?;
    cells.sort_by(|a, b| {
        let key = |c: &ServiceCell| {
            (
                c.service.clone(),
                c.cluster_ip.is_ipv6(),
                c.port,
                c.from.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(cells)
}

/// One Service probe, predicted.
fn service_cell(
    snapshot: &Snapshot,
    state: &State,
    from: &PodState,
    key: &str,
    ip: IpAddr,
    port: &ResolvedPort,
) -> ServiceCell {
    let (predicted, allowed_backends, denied_backends) =
        predict_service(snapshot, state, from, port, Family::of(ip));
    ServiceCell {
        from: from.key.clone(),
        service: key.to_string(),
        cluster_ip: ip,
        port: port.port,
        protocol: port.protocol,
        outcome: Outcome::NoAnswer,
        answered_by: None,
        no_answer: None,
        predicted,
        allowed_backends,
        denied_backends,
    }
}

/// Sends one probe to a ClusterIP (from inside the client pod) and records who answered.
fn send_service(mut cell: ServiceCell, timeout: Duration) -> ServiceCell {
    let addr = SocketAddr::new(cell.cluster_ip, cell.port);
    match serve::probe(addr, cell.protocol, timeout) {
        Ok(id) => {
            cell.outcome = if cell.allowed_backends.contains(&id) {
                Outcome::Answered
            } else {
                Outcome::WrongPod
            };
            cell.answered_by = Some(id);
        }
        Err(why) => cell.no_answer = Some(why),
    }
    cell
}
#[cfg(test)]
mod tests {
    use super::*;

    fn cell(answered_by: Option<&str>, predicted: ServicePrediction) -> ServiceCell {
        ServiceCell {
            from: "shop/client".into(),
            service: "secure/api".into(),
            cluster_ip: "10.96.0.20".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            outcome: if answered_by.is_some() {
                Outcome::Answered
            } else {
                Outcome::NoAnswer
            },
            answered_by: answered_by.map(str::to_string),
            no_answer: answered_by.is_none().then_some(NoAnswer::Reset),
            predicted,
            allowed_backends: vec!["secure/api-1".into()],
            denied_backends: vec![("secure/api-2".into(), "ingress denied".into())],
        }
    }

    fn pod(key: &str, ip: &str, injected: bool, enforces_udp: bool) -> PodState {
        PodState {
            key: key.into(),
            netns: String::new(),
            ip: ip.parse().unwrap(),
            ipv6: None,
            port: String::new(),
            mac: String::new(),
            pids: Vec::new(),
            proxy_log: Default::default(),
            injected,
            not_injected: None,
            enforces_udp,
            bound: Default::default(),
            system: false,
            node: String::new(),
        }
    }

    /// x/a may send nothing, x/b may receive nothing (deny-all both ways on both pods).
    fn compiled() -> CompiledCluster {
        let mut cluster = portcullis_policy::Cluster::new();
        let text = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
status: {podIP: 10.1.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
";
        let report = portcullis_policy::manifest::load_into(&mut cluster, text, "t");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        portcullis_policy::compile(&cluster)
    }

    #[test]
    fn only_the_halves_a_proxy_enforces_count() {
        let c = compiled();
        let tcp = Probe {
            port: 80,
            protocol: Protocol::Tcp,
        };
        let udp = Probe {
            port: 53,
            protocol: Protocol::Udp,
        };
        let (a, b) = (
            pod("x/a", "10.1.0.1", true, true),
            pod("x/b", "10.1.0.2", true, true),
        );
        assert!(!predict(&c, &a, &b, tcp, Family::IPv4).0);
        assert!(!predict(&c, &a, &b, udp, Family::IPv4).0);
        // Without a proxy on a, its egress is not enforced; b's ingress still is.
        let bare_a = pod("x/a", "10.1.0.1", false, false);
        let (ok, why) = predict(&c, &bare_a, &b, tcp, Family::IPv4);
        assert!(!ok, "{why}");
        assert!(why.contains("ingress denied"), "{why}");
        // Neither has a proxy: nothing is enforced, whatever the policy says.
        let bare_b = pod("x/b", "10.1.0.2", false, false);
        let (ok, why) = predict(&c, &bare_a, &bare_b, tcp, Family::IPv4);
        assert!(ok, "{why}");
        assert!(
            why.contains("egress not enforced: x/a has no proxy")
                && why.contains("ingress not enforced: x/b has no proxy"),
            "{why}"
        );
        // Proxies that do not enforce UDP: UDP passes, TCP does not.
        let (a, b) = (
            pod("x/a", "10.1.0.1", true, false),
            pod("x/b", "10.1.0.2", true, false),
        );
        assert!(predict(&c, &a, &b, udp, Family::IPv4).0);
        assert!(!predict(&c, &a, &b, tcp, Family::IPv4).0);
    }

    /// x/c's egress allows x/b1 (not x/b2) on 8080, TCP and UDP; Service x/s selects both, on
    /// TCP and UDP; Service x/own selects x/c itself.
    fn service_case(injected: bool) -> (Snapshot, State) {
        let text = "
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: c}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b1, namespace: x, labels: {app: b, ok: 'yes'}}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b2, namespace: x, labels: {app: b}}
status: {podIP: 10.1.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {ok: 'yes'}}}]
      ports: [{port: 8080}, {port: 8080, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec:
  clusterIP: 10.96.0.50
  selector: {app: b}
  ports: [{name: t, port: 80, targetPort: 8080}, {name: u, port: 80, protocol: UDP, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: own, namespace: x}
spec:
  clusterIP: 10.96.0.51
  selector: {app: c}
  ports: [{port: 80, targetPort: 8080}]
";
        let mut cluster = portcullis_policy::Cluster::new();
        let report = portcullis_policy::manifest::load_into(&mut cluster, text, "t");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let snapshot = Snapshot::of(cluster).unwrap();
        let state = State {
            name: "t".into(),
            node_netns: String::new(),
            pods: vec![
                pod("x/c", "10.1.0.1", injected, injected),
                pod("x/b1", "10.1.0.2", true, true),
                pod("x/b2", "10.1.0.3", true, true),
            ],
            policy_dir: Default::default(),
            controller: None,
            wanted_ports: Default::default(),
            extra_probes: Vec::new(),
            dns: None,
            enforce_udp: true,
            node_guard: None,
            nodes: Vec::new(),
            host_pods: Vec::new(),
        };
        (snapshot, state)
    }

    fn predicted(
        injected: bool,
        service: &str,
        protocol: Protocol,
    ) -> (ServicePrediction, Vec<String>, Vec<(String, String)>) {
        let (snapshot, state) = service_case(injected);
        let port = snapshot.services.services[service]
            .ports
            .iter()
            .find(|p| p.protocol == protocol)
            .unwrap()
            .clone();
        predict_service(&snapshot, &state, &state.pods[0], &port, Family::IPv4)
    }

    #[test]
    fn a_proxied_client_lands_only_on_backends_its_egress_allows() {
        // TCP: the proxy balances over x/b1 only; x/b2 is never tried.
        let (p, allowed, denied) = predicted(true, "x/s", Protocol::Tcp);
        assert_eq!(p, ServicePrediction::Allowed);
        assert_eq!(allowed, vec!["x/b1".to_string()]);
        assert_eq!(denied.len(), 1);
        assert!(
            denied[0].0 == "x/b2" && denied[0].1.contains("egress"),
            "{denied:?}"
        );
        // UDP: kube-proxy picks either, so the proxy drops the flow unless both are allowed.
        let (p, allowed, denied) = predicted(true, "x/s", Protocol::Udp);
        assert_eq!(p, ServicePrediction::Denied);
        assert!(allowed.is_empty());
        assert!(denied
            .iter()
            .any(|(b, why)| b == "x/b1" && why.contains("unless its egress allows every backend")));
        // Without a proxy nothing of the client's egress is enforced: both backends, either way.
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let (p, allowed, _) = predicted(false, "x/s", protocol);
            assert_eq!(p, ServicePrediction::Allowed);
            assert_eq!(allowed, vec!["x/b1".to_string(), "x/b2".to_string()]);
        }
    }

    #[test]
    fn a_proxied_client_reaches_itself_through_its_service_and_a_bare_one_hairpins() {
        let (p, allowed, _) = predicted(true, "x/own", Protocol::Tcp);
        assert_eq!(
            (p, allowed),
            (ServicePrediction::Allowed, vec!["x/c".to_string()])
        );
        let (p, allowed, denied) = predicted(false, "x/own", Protocol::Tcp);
        assert_eq!(p, ServicePrediction::Denied);
        assert!(allowed.is_empty());
        assert_eq!(denied, vec![("x/c".to_string(), HAIRPIN.to_string())]);
    }

    #[test]
    fn an_answer_from_a_denied_backend_is_a_difference_even_though_the_client_got_one() {
        assert!(!cell(Some("secure/api-1"), ServicePrediction::Partly).differs());
        assert!(cell(Some("secure/api-2"), ServicePrediction::Partly).differs());
        assert!(cell(Some("other/pod"), ServicePrediction::Partly).differs());
        // Partly allowed: landing on the denied backend and getting nothing is expected.
        assert!(!cell(None, ServicePrediction::Partly).differs());
        // Every backend allowed: nothing coming back is a difference.
        assert!(cell(None, ServicePrediction::Allowed).differs());
        assert!(!cell(None, ServicePrediction::Denied).differs());
    }
}
