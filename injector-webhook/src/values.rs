//! Parsers for the values users may put in `portcullis.dev/*` annotations and in the injector's
//! flags. Every parser is strict: a value that is not understood is an error, and the caller
//! falls back to the next default and reports a warning.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

/// The most entries accepted in a port or CIDR list (keeps iptables rule sets small and bounds
/// the work done per request).
pub const MAX_LIST_ENTRIES: usize = 64;

/// An error in a user-supplied value, phrased to be shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

fn err(msg: impl Into<String>) -> ValueError {
    ValueError(msg.into())
}

/// A comma-separated list of ports and inclusive port ranges: `22,8000-8100`. Empty is allowed
/// and means "no ports". Rendered without spaces, in the order given, as `portcullis-init` reads
/// it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(Vec<(u16, u16)>);

impl PortList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
}

fn parse_port(s: &str) -> Result<u16, ValueError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("{s:?} is not a port number")));
    }
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(err(format!("port {s} is out of range 1-65535"))),
    }
}

impl FromStr for PortList {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(PortList::default());
        }
        let mut out = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(err("empty entry in port list"));
            }
            let range = match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (parse_port(lo.trim())?, parse_port(hi.trim())?);
                    if lo > hi {
                        return Err(err(format!("port range {item} is reversed")));
                    }
                    (lo, hi)
                }
                None => {
                    let p = parse_port(item)?;
                    (p, p)
                }
            };
            out.push(range);
            if out.len() > MAX_LIST_ENTRIES {
                return Err(err(format!("more than {MAX_LIST_ENTRIES} entries")));
            }
        }
        Ok(PortList(out))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// A comma-separated list of IPv4/IPv6 networks: `10.0.0.0/8,fd00::/8`. A bare address means
/// that single host (`/32` or `/128`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(Vec<IpNet>);

impl CidrList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

impl FromStr for CidrList {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(CidrList::default());
        }
        let mut out = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(err("empty entry in CIDR list"));
            }
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match item.parse::<std::net::IpAddr>() {
                    Ok(addr) => IpNet::from(addr),
                    Err(_) => return Err(err(format!("{item:?} is not a CIDR"))),
                },
            };
            out.push(net);
            if out.len() > MAX_LIST_ENTRIES {
                return Err(err(format!("more than {MAX_LIST_ENTRIES} entries")));
            }
        }
        Ok(CidrList(out))
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// What the proxy does with traffic that policy denies (`PORTCULLIS_MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PolicyMode {
    /// Deny what policy denies.
    #[default]
    Enforce,
    /// Allow everything, log and count what policy would deny.
    Audit,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
        }
    }
}

impl FromStr for PolicyMode {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "enforce" => Ok(PolicyMode::Enforce),
            "audit" => Ok(PolicyMode::Audit),
            other => Err(err(format!(
                "{other:?} is not a policy mode (enforce, audit)"
            ))),
        }
    }
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `true` or `false`, exactly (an annotation with anything else is reported and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl FromStr for Switch {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "true" => Ok(Switch(true)),
            "false" => Ok(Switch(false)),
            other => Err(err(format!("{other:?} is not true or false"))),
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "true" } else { "false" })
    }
}

/// How the proxy container is added to the pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SidecarMode {
    /// Kubernetes ≥ 1.29 native sidecar: an init container with `restartPolicy: Always`, right
    /// after `portcullis-init`. It starts before, and stops after, every other container.
    #[default]
    Native,
    /// A regular container, first in `containers`. For clusters without native sidecars.
    Classic,
}

impl SidecarMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Classic => "classic",
        }
    }
}

impl FromStr for SidecarMode {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "native" => Ok(SidecarMode::Native),
            "classic" => Ok(SidecarMode::Classic),
            other => Err(err(format!(
                "{other:?} is not a sidecar mode (native, classic)"
            ))),
        }
    }
}

impl fmt::Display for SidecarMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`), checked against the API's
/// grammar and turned into a number so that requests and limits can be compared. Negative
/// values are rejected: they are never valid for resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

impl Quantity {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value in base units (cores, bytes).
    pub fn value(&self) -> f64 {
        self.value
    }
}

impl FromStr for Quantity {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let bad = || err(format!("{text:?} is not a Kubernetes quantity"));
        if text.is_empty() || text.len() > 32 {
            return Err(bad());
        }
        let text = text.strip_prefix('+').unwrap_or(text);
        if text.starts_with('-') {
            return Err(err(format!("{text:?} is negative")));
        }
        let num_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (num, suffix) = text.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let base: f64 = num.parse().map_err(|_| bad())?;
        let factor = match suffix {
            "" => 1.0,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024f64,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            exp if exp.starts_with(['e', 'E']) => {
                let digits = &exp[1..];
                let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
                if unsigned.is_empty()
                    || unsigned.len() > 3
                    || !unsigned.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad());
                }
                let e: i32 = digits.parse().map_err(|_| bad())?;
                10f64.powi(e)
            }
            _ => return Err(bad()),
        };
        let value = base * factor;
        if !value.is_finite() {
            return Err(bad());
        }
        Ok(Quantity {
            text: text.to_string(),
            value,
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A `tracing` filter for `PORTCULLIS_LOG`: comma-separated directives, each a level or
/// `target=level` (`info`, `warn,portcullis_proxy=debug`). Deliberately narrower than the full
/// `EnvFilter` syntax (no spans or field filters) so that a typo cannot silence the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(String);

impl LogLevel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel("info".to_string())
    }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl FromStr for LogLevel {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.len() > 256 {
            return Err(err("log level must be 1 to 256 characters"));
        }
        for directive in s.split(',') {
            let directive = directive.trim();
            let level = match directive.split_once('=') {
                Some((target, level)) => {
                    let target_ok = !target.is_empty()
                        && target
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'));
                    if !target_ok {
                        return Err(err(format!("{target:?} is not a log target")));
                    }
                    level
                }
                None => directive,
            };
            if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
                return Err(err(format!(
                    "{level:?} is not a log level (trace, debug, info, warn, error, off)"
                )));
            }
        }
        let normalized: Vec<&str> = s.split(',').map(str::trim).collect();
        Ok(LogLevel(normalized.join(",")))
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        assert_eq!("".parse::<PortList>(), Ok(PortList::default()));
        assert_eq!("  ".parse::<PortList>(), Ok(PortList::default()));
        let l: PortList = "22, 8000-8100,443".parse().expect("valid");
        assert_eq!(l.ranges(), &[(22, 22), (8000, 8100), (443, 443)]);
        assert_eq!(l.to_string(), "22,8000-8100,443");
        assert_eq!(
            "65535,1".parse::<PortList>().map(|l| l.to_string()),
            Ok("65535,1".into())
        );
        for bad in [
            "0",
            "65536",
            "22,",
            ",22",
            "a",
            "-5",
            "100-1",
            "1-2-3",
            "22 23",
            "+22",
            "99999999999999999999",
        ] {
            assert!(
                bad.parse::<PortList>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        let many = (1..=65)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(many.parse::<PortList>().is_err());
    }

    #[test]
    fn cidr_lists() {
        let l: CidrList = "10.0.0.0/8, fd00::/8,192.168.1.1".parse().expect("valid");
        assert_eq!(l.to_string(), "10.0.0.0/8,fd00::/8,192.168.1.1/32");
        assert_eq!(
            "::1".parse::<CidrList>().map(|l| l.to_string()),
            Ok("::1/128".into())
        );
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "10.0.0.0/8,", "fd00::/129"] {
            assert!(
                bad.parse::<CidrList>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn modes() {
        assert_eq!("audit".parse(), Ok(PolicyMode::Audit));
        assert_eq!(" enforce ".parse(), Ok(PolicyMode::Enforce));
        assert!("Enforce".parse::<PolicyMode>().is_err());
        assert!("".parse::<PolicyMode>().is_err());
        assert_eq!("classic".parse(), Ok(SidecarMode::Classic));
        assert_eq!("native".parse(), Ok(SidecarMode::Native));
        assert!("sidecar".parse::<SidecarMode>().is_err());
        assert_eq!("false".parse(), Ok(Switch(false)));
        assert_eq!(" true".parse(), Ok(Switch(true)));
        assert!("False".parse::<Switch>().is_err());
        assert!("no".parse::<Switch>().is_err());
    }

    #[test]
    fn quantities() {
        let q = |s: &str| s.parse::<Quantity>().map(|q| q.value());
        assert_eq!(q("100m"), Ok(0.1));
        assert_eq!(q("1"), Ok(1.0));
        assert_eq!(q("1.5"), Ok(1.5));
        assert_eq!(q(".5"), Ok(0.5));
        assert_eq!(q("64Mi"), Ok(64.0 * 1024.0 * 1024.0));
        assert_eq!(q("1k"), Ok(1000.0));
        assert_eq!(q("2e3"), Ok(2000.0));
        assert_eq!(q("2E-3"), Ok(0.002));
        assert_eq!(q("+3"), Ok(3.0));
        for bad in [
            "", "-1", "1.2.3", "Mi", "1mi", "1 Mi", "1KiB", "1e", "1e9999", "abc", ".", "1e+",
        ] {
            assert!(
                bad.parse::<Quantity>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn log_levels() {
        for ok in [
            "info",
            "warn,portcullis_proxy=debug",
            "DEBUG",
            "hyper::proto=off",
        ] {
            assert!(ok.parse::<LogLevel>().is_ok(), "{ok:?} should be accepted");
        }
        assert_eq!(
            "warn, a=debug".parse::<LogLevel>().map(|l| l.to_string()),
            Ok("warn,a=debug".into())
        );
        for bad in [
            "",
            "verbose",
            "a=",
            "=info",
            "a b=info",
            "info,",
            "a[span]=info",
        ] {
            assert!(
                bad.parse::<LogLevel>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
