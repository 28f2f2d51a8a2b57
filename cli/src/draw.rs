//! Pictures of who may reach whom: namespaces as arcs of a circle, pods on them, one arrow per
//! pair of pods (its ports in the tooltip and the HTML table). SVG, or one self-contained HTML
//! page around it. No script, no external resource.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use portcullis_advise::workload::Peer;
use portcullis_advise::Advice;
use portcullis_contract::log::FlowDirection;
use portcullis_policy::{Cluster, Matrix};

/// What an arrow says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Seen in the flow records (and allowed by the advised policies).
    Observed,
    /// Allowed by the policies.
    Allowed,
    /// Allowed by the advised policies, never seen.
    AlsoAllowed,
}

impl Kind {
    fn style(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Observed => ("#1f6feb", "2.5", ""),
            Kind::Allowed => ("#2da44e", "1.2", ""),
            Kind::AlsoAllowed => ("#d4a72c", "1.5", "5,4"),
        }
    }
    fn words(self) -> &'static str {
        match self {
            Kind::Observed => "observed",
            Kind::Allowed => "allowed",
            Kind::AlsoAllowed => "allowed, never observed",
        }
    }
}

/// Nodes grouped by namespace (or "outside"), and arrows between them.
#[derive(Debug, Default)]
pub struct Picture {
    pub title: String,
    /// Group name → node names (`namespace/pod`, or an address).
    pub groups: BTreeMap<String, Vec<String>>,
    /// (from, to, kind) → ports, e.g. `80/TCP`.
    pub edges: BTreeMap<(String, String, Kind), Vec<String>>,
    /// What an absent arrow means.
    pub absent: &'static str,
}

impl Picture {
    fn node(&mut self, group: &str, name: &str) {
        let nodes = self.groups.entry(group.to_string()).or_default();
        if !nodes.iter().any(|n| n == name) {
            nodes.push(name.to_string());
        }
    }
    fn edge(&mut self, from: &str, to: &str, kind: Kind, port: String) {
        let ports = self
            .edges
            .entry((from.to_string(), to.to_string(), kind))
            .or_default();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
}

/// The matrix: one green arrow per pair with any allowed probe.
pub fn matrix(matrix: &Matrix) -> Picture {
    let mut p = Picture {
        title: "Portcullis: allowed connections".into(),
        absent: "no arrow: every probed port denied",
        ..Picture::default()
    };
    for cell in &matrix.probes {
        for pod in [&cell.from, &cell.to] {
            p.node(pod.split('/').next().unwrap_or_default(), pod);
        }
        if cell.allowed && cell.from != cell.to {
            p.edge(
                &cell.from,
                &cell.to,
                Kind::Allowed,
                format!("{}/{}", cell.port, cell.protocol),
            );
        }
    }
    p
}

/// advise: observed flows (blue) and what the advised policies allow beyond them (dashed).
pub fn advised(cluster: &Cluster, advice: &Advice) -> Picture {
    let mut p = Picture {
        title: "Portcullis advise: observed flows and what the advised policies also allow".into(),
        absent: "no arrow: denied by the advised policies (pods they select)",
        ..Picture::default()
    };
    for pod in cluster
        .pods
        .iter()
        .filter(|p| p.selectable() && !p.ips.is_empty())
    {
        p.node(&pod.namespace, &pod.key());
    }
    for o in &advice.observations {
        let peer = match (&o.peer, &o.peer_pod) {
            (_, Some(pod)) => pod.clone(),
            (Peer::Namespace(ns), None) => format!("{ns}/*"),
            (Peer::Node { ip, .. } | Peer::External(ip), None) => ip.to_string(),
            (Peer::Workload(w), None) => w.to_string(),
        };
        let group = match &o.peer {
            Peer::Workload(w) => w.namespace.clone(),
            Peer::Namespace(ns) => ns.clone(),
            Peer::Node { .. } => "nodes".into(),
            Peer::External(_) => "outside".into(),
        };
        p.node(&group, &peer);
        let (from, to) = match o.direction {
            FlowDirection::Egress => (o.subject_pod.clone(), peer),
            FlowDirection::Ingress => (peer, o.subject_pod.clone()),
        };
        p.edge(
            &from,
            &to,
            Kind::Observed,
            format!("{}/{}", o.port, o.protocol),
        );
    }
    let representative = |w: &portcullis_advise::workload::WorkloadId| {
        cluster
            .pods
            .iter()
            .find(|pod| {
                pod.selectable() && portcullis_advise::workload::Index::workload_of(pod) == *w
            })
            .map(|pod| pod.key())
    };
    for a in &advice.proof.also_allowed {
        if let (Some(from), Some(to)) = (representative(&a.from), representative(&a.to)) {
            p.edge(
                &from,
                &to,
                Kind::AlsoAllowed,
                format!("{}/{}", a.port, a.protocol),
            );
        }
    }
    p
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Positions on the circle: each group an arc, a gap between groups.
fn layout(p: &Picture, radius: f64, centre: f64) -> BTreeMap<&str, (f64, f64, f64)> {
    let slots: usize = p.groups.values().map(Vec::len).sum::<usize>() + p.groups.len();
    let step = 2.0 * PI / slots.max(1) as f64;
    let mut at = BTreeMap::new();
    let mut slot = 0usize;
    for nodes in p.groups.values() {
        for n in nodes {
            let angle = slot as f64 * step - PI / 2.0;
            at.insert(
                n.as_str(),
                (
                    centre + radius * angle.cos(),
                    centre + radius * angle.sin(),
                    angle,
                ),
            );
            slot += 1;
        }
        slot += 1;
    }
    at
}

/// The curve's control point: the chord's middle pulled towards the centre, and moved to the
/// right of the direction of travel so that A→B and B→A stay apart.
fn control(a: &(f64, f64, f64), b: &(f64, f64, f64), centre: f64) -> (f64, f64) {
    let (mx, my) = ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt().max(1.0);
    let (px, py) = (-dy / len * 14.0, dx / len * 14.0);
    (mx * 0.6 + centre * 0.4 + px, my * 0.6 + centre * 0.4 + py)
}

/// Each group's arc just outside its pods, and its name beyond the arc's middle.
fn groups(
    s: &mut String,
    p: &Picture,
    at: &BTreeMap<&str, (f64, f64, f64)>,
    radius: f64,
    centre: f64,
) {
    for (group, nodes) in &p.groups {
        let angles: Vec<f64> = nodes
            .iter()
            .filter_map(|n| at.get(n.as_str()))
            .map(|a| a.2)
            .collect();
        let (Some(first), Some(last)) = (angles.first(), angles.last()) else {
            continue;
        };
        let r = radius + 24.0;
        let point = |angle: f64, r: f64| (centre + r * angle.cos(), centre + r * angle.sin());
        let (start, end) = (point(first - 0.08, r), point(last + 0.08, r));
        let large = i32::from(last - first + 0.16 > PI);
        let _ = writeln!(
            s,
            r##"<path d="M{:.1},{:.1} A{r:.1},{r:.1} 0 {large} 1 {:.1},{:.1}" fill="none" stroke="#b6e3ff" stroke-width="8" stroke-linecap="round"/>"##,
            start.0, start.1, end.0, end.1
        );
        let middle = (first + last) / 2.0;
        let (gx, gy) = point(middle, r + 22.0);
        let anchor = if middle.cos() < -0.3 {
            "end"
        } else if middle.cos() > 0.3 {
            "start"
        } else {
            "middle"
        };
        let _ = writeln!(
            s,
            r##"<text class="namespace" x="{gx:.1}" y="{:.1}" text-anchor="{anchor}" font-weight="bold" fill="#0550ae">{}</text>"##,
            gy + 4.0,
            escape(group)
        );
    }
}

/// The picture as a standalone SVG document.
pub fn svg(p: &Picture) -> String {
    let nodes: usize = p.groups.values().map(Vec::len).sum();
    let radius = (nodes as f64 * 14.0).clamp(160.0, 1400.0);
    let size = 2.0 * radius + 360.0;
    let centre = size / 2.0;
    let at = layout(p, radius, centre);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size:.0} {h:.0}" width="{size:.0}" height="{h:.0}" font-family="sans-serif" font-size="12">
<title>{}</title>
<defs>"#,
        escape(&p.title),
        h = size + 60.0
    );
    for kind in [Kind::Observed, Kind::Allowed, Kind::AlsoAllowed] {
        let (color, _, _) = kind.style();
        let _ = write!(
            s,
            r#"<marker id="arrow-{k:?}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>"#,
            k = kind
        );
    }
    s.push_str("</defs>\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    for ((from, to, kind), ports) in &p.edges {
        let (Some(a), Some(b)) = (at.get(from.as_str()), at.get(to.as_str())) else {
            continue;
        };
        let (color, width, dash) = kind.style();
        let (cx, cy) = control(a, b, centre);
        let _ = writeln!(
            s,
            r#"<path class="edge" d="M{:.1},{:.1} Q{cx:.1},{cy:.1} {:.1},{:.1}" fill="none" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}" marker-end="url(#arrow-{kind:?})"><title>{} → {}: {} ({})</title></path>"#,
            a.0,
            a.1,
            b.0,
            b.1,
            escape(from),
            escape(to),
            escape(&ports.join(", ")),
            kind.words()
        );
    }
    groups(&mut s, p, &at, radius, centre);
    for nodes in p.groups.values() {
        for n in nodes {
            let Some((x, y, angle)) = at.get(n.as_str()) else {
                continue;
            };
            let anchor = if angle.cos() < 0.0 { "end" } else { "start" };
            let (lx, ly) = (x + 10.0 * angle.cos(), y + 10.0 * angle.sin() + 4.0);
            let label = n.split_once('/').map_or(n.as_str(), |(_, pod)| pod);
            let _ = writeln!(
                s,
                r##"<g class="pod"><circle cx="{x:.1}" cy="{y:.1}" r="5" fill="#57606a"><title>{}</title></circle><text x="{lx:.1}" y="{ly:.1}" text-anchor="{anchor}">{}</text></g>"##,
                escape(n),
                escape(label)
            );
        }
    }
    legend(&mut s, p, size + 10.0);
    s.push_str("</svg>\n");
    s
}

/// The key to the arrows, under the circle.
fn legend(s: &mut String, p: &Picture, mut y: f64) {
    for kind in [Kind::Observed, Kind::Allowed, Kind::AlsoAllowed] {
        if !p.edges.keys().any(|k| k.2 == kind) {
            continue;
        }
        let (color, width, dash) = kind.style();
        let _ = writeln!(
            s,
            r#"<line x1="20" y1="{y:.0}" x2="60" y2="{y:.0}" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}"/><text x="70" y="{:.0}">{}</text>"#,
            y + 4.0,
            kind.words()
        );
        y += 16.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.0}">{}</text>"#,
        y + 4.0,
        escape(p.absent)
    );
}

/// One self-contained HTML page: the SVG, then every arrow in a table.
pub fn html(p: &Picture) -> String {
    let mut rows = String::new();
    for ((from, to, kind), ports) in &p.edges {
        let _ = writeln!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(from),
            escape(to),
            escape(&ports.join(", ")),
            kind.words()
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #d0d7de;padding:2px 8px;text-align:left}} \
         svg .edge:hover{{stroke-width:5}}</style></head>\n<body><h1>{title}</h1>\n{svg}\n\
         <h2>Arrows</h2><table><tr><th>from</th><th>to</th><th>ports</th><th>what</th></tr>\n{rows}</table>\n\
         <p>{absent}</p></body></html>\n",
        title = escape(&p.title),
        svg = svg(p),
        absent = escape(p.absent)
    )
}

/// Writes SVG, or HTML when the file name ends in `.html`/`.htm`.
pub fn write(path: &Path, p: &Picture) -> Result<()> {
    let html_file = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    let text = if html_file { html(p) } else { svg(p) };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
