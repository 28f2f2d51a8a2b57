//! Flood control for audit lines, as plain state: the caller supplies the clock.
//!
//! Two bounds, both of which only *fold* lines (every connection is still counted in some line's
//! `count`):
//! - **Windows**: the first line of an (event, protocol, direction, peer, port) is written at
//!   once; repeats within the window are summed into one `aggregated` line when it ends. At most
//!   `capacity` windows are open; beyond that, lines are summed into one overflow line.
//! - **A budget per event kind**, in lines per second with a burst: whatever the sources (forged
//!   addresses defeat the windows: each is a new key), no event kind writes more than its budget.
//!   Lines over budget are summed per kind and written once per flush tick as one line with
//!   `rate_limited: true` and the count of the connections they stood for.
//!
//! Not a TTL cache crate (`moka`): when a window ends it must *write* a summary line, on the
//! caller's flush tick and clock (tests drive both); moka expires entries lazily on its own clock
//! and offers no ordered, synchronous "window closed" hook to write from. Not `governor` for the
//! budget: it needs one token bucket per event kind on the caller's clock, a dozen lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use portcullis_policy::{Direction, Protocol};

use super::{AuditEvent, AuditLine, AuditRecord};

/// How many lines each event kind may write: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineBudget {
    pub per_second: f64,
    pub burst: f64,
}

impl LineBudget {
    /// No bound (tests of the windows alone).
    pub const UNLIMITED: LineBudget = LineBudget {
        per_second: f64::INFINITY,
        burst: f64::INFINITY,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DenialKey {
    event: AuditEvent,
    protocol: Protocol,
    direction: Direction,
    peer: IpAddr,
    port: u16,
}

struct Window {
    started: Instant,
    repeats: u64,
    last: AuditRecord,
}

/// A token bucket: `tokens` lines may be written now.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Lines over budget for one event kind: how many connections they stood for, and the last.
struct Folded {
    count: u64,
    last: AuditRecord,
}

pub struct Aggregator {
    window: Duration,
    capacity: usize,
    budget: LineBudget,
    windows: HashMap<DenialKey, Window>,
    /// Lines not tracked individually because `capacity` distinct keys were already open.
    overflow: Option<(u64, AuditRecord)>,
    buckets: HashMap<AuditEvent, Bucket>,
    folded: HashMap<AuditEvent, Folded>,
}

impl Aggregator {
    pub fn new(window: Duration, capacity: usize, budget: LineBudget) -> Self {
        Aggregator {
            window,
            capacity,
            budget,
            windows: HashMap::new(),
            overflow: None,
            buckets: HashMap::new(),
            folded: HashMap::new(),
        }
    }

    /// Records one event. Returns the lines to write now.
    pub fn record(&mut self, record: AuditRecord, now: Instant) -> Vec<AuditLine> {
        let mut out = Vec::new();
        if self.window.is_zero() {
            self.emit(single(record), now, &mut out);
            return out;
        }
        let key = DenialKey {
            event: record.event,
            protocol: record.protocol,
            direction: record.direction,
            peer: record.peer(),
            port: record.destination.port(),
        };
        if let Some(w) = self.windows.get_mut(&key) {
            if now.duration_since(w.started) < self.window {
                w.repeats += 1;
                w.last = record;
                return out;
            }
            if let Some(summary) = summary_of(w) {
                self.emit(summary, now, &mut out);
            }
            self.windows.remove(&key);
        }
        if self.windows.len() >= self.capacity {
            let entry = self.overflow.get_or_insert_with(|| (0, record.clone()));
            entry.0 += 1;
            entry.1 = record;
            return out;
        }
        self.windows.insert(
            key,
            Window {
                started: now,
                repeats: 0,
                last: record.clone(),
            },
        );
        self.emit(single(record), now, &mut out);
        out
    }

    /// Closes the windows that have ended, and writes what the budget folded. Returns the lines.
    pub fn flush(&mut self, now: Instant) -> Vec<AuditLine> {
        let window = self.window;
        let mut ended = Vec::new();
        self.windows.retain(|_, w| {
            if now.duration_since(w.started) < window {
                return true;
            }
            ended.extend(summary_of(w));
            false
        });
        let mut out = Vec::new();
        for summary in ended {
            self.emit(summary, now, &mut out);
        }
        if let Some((count, record)) = self.overflow.take() {
            let line = AuditLine {
                record,
                count,
                aggregated: true,
                rate_limited: false,
            };
            self.emit(line, now, &mut out);
        }
        // One line per event kind for everything over budget since the last tick: at most one
        // line per kind per tick, whatever came in.
        let mut folded: Vec<_> = self.folded.drain().collect();
        folded.sort_by_key(|(event, _)| event.as_str());
        out.extend(folded.into_iter().map(|(_, f)| AuditLine {
            record: f.last,
            count: f.count,
            aggregated: true,
            rate_limited: true,
        }));
        out
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Writes `line` if its event kind has budget left; folds it otherwise.
    fn emit(&mut self, line: AuditLine, now: Instant, out: &mut Vec<AuditLine>) {
        let event = line.record.event;
        let budget = self.budget;
        let bucket = self.buckets.entry(event).or_insert(Bucket {
            tokens: budget.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * budget.per_second).min(budget.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            out.push(line);
            return;
        }
        metrics::counter!(crate::telemetry::AUDIT_LINES_FOLDED, "event" => event.as_str())
            .increment(1);
        let folded = self.folded.entry(event).or_insert(Folded {
            count: 0,
            last: line.record.clone(),
        });
        folded.count += line.count;
        folded.last = line.record;
    }
}

fn single(record: AuditRecord) -> AuditLine {
    AuditLine {
        record,
        count: 1,
        aggregated: false,
        rate_limited: false,
    }
}

fn summary_of(w: &Window) -> Option<AuditLine> {
    (w.repeats > 0).then(|| AuditLine {
        record: w.last.clone(),
        count: w.repeats,
        aggregated: true,
        rate_limited: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::{Reason, Verdict};
    use std::sync::Arc;

    fn denial(peer: &str, port: u16) -> AuditRecord {
        AuditRecord {
            event: AuditEvent::Denied,
            direction: Direction::Ingress,
            source: format!("{peer}:40000").parse().expect("addr"),
            destination: format!("10.0.0.1:{port}").parse().expect("addr"),
            peer_pod: None,
            pod: "x/a".into(),
            verdict: Some(Verdict {
                direction: Direction::Ingress,
                reason: Reason::NoRuleMatched {
                    isolated_by: Arc::from(vec![Arc::from("x/deny-all")]),
                },
            }),
            generation: 1,
            protocol: Protocol::Tcp,
            service: None,
            staged_by: Vec::new(),
        }
    }

    #[test]
    fn first_denial_is_written_at_once_and_repeats_are_summed() {
        let mut a = Aggregator::new(Duration::from_secs(10), 100, LineBudget::UNLIMITED);
        let t0 = Instant::now();
        assert_eq!(a.record(denial("10.0.0.9", 80), t0).len(), 1);
        for i in 0..99 {
            assert!(a
                .record(denial("10.0.0.9", 80), t0 + Duration::from_millis(i))
                .is_empty());
        }
        assert!(
            a.flush(t0 + Duration::from_secs(5)).is_empty(),
            "window still open"
        );
        let summary = a.flush(t0 + Duration::from_secs(11));
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].count, 99);
        assert!(summary[0].aggregated);
        assert_eq!(a.open_windows(), 0);
    }

    #[test]
    fn different_ports_and_peers_are_separate_lines() {
        let mut a = Aggregator::new(Duration::from_secs(10), 100, LineBudget::UNLIMITED);
        let t0 = Instant::now();
        assert_eq!(a.record(denial("10.0.0.9", 80), t0).len(), 1);
        assert_eq!(a.record(denial("10.0.0.9", 81), t0).len(), 1);
        assert_eq!(a.record(denial("10.0.0.8", 80), t0).len(), 1);
        let udp = AuditRecord {
            protocol: Protocol::Udp,
            ..denial("10.0.0.9", 80)
        };
        assert_eq!(a.record(udp, t0).len(), 1, "UDP and TCP are separate lines");
    }

    #[test]
    fn a_scan_beyond_capacity_costs_one_line() {
        let mut a = Aggregator::new(Duration::from_secs(10), 10, LineBudget::UNLIMITED);
        let t0 = Instant::now();
        let mut written = 0;
        for port in 1..=1000 {
            written += a.record(denial("10.0.0.9", port), t0).len();
        }
        assert_eq!(written, 10);
        let summary = a.flush(t0 + Duration::from_secs(11));
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].count, 990);
    }

    #[test]
    fn a_repeat_after_the_window_is_written_again() {
        let mut a = Aggregator::new(Duration::from_secs(1), 100, LineBudget::UNLIMITED);
        let t0 = Instant::now();
        a.record(denial("10.0.0.9", 80), t0);
        a.record(denial("10.0.0.9", 80), t0);
        let lines = a.record(denial("10.0.0.9", 80), t0 + Duration::from_secs(2));
        assert_eq!(
            lines.len(),
            2,
            "summary of the old window, then the new denial"
        );
        assert_eq!(lines[0].count, 1);
        assert!(!lines[1].aggregated);
    }

    fn budget(per_second: f64, burst: f64) -> LineBudget {
        LineBudget { per_second, burst }
    }

    /// Forged sources: every denial is a new key, so the windows fold nothing; the budget does.
    #[test]
    fn forged_sources_cost_the_budget_and_nothing_is_lost() {
        let mut a = Aggregator::new(Duration::from_secs(10), 4096, budget(20.0, 50.0));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        // 100,000 denials from distinct addresses over 10 s, flushed every second.
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            let [_, b, c, d] = i.to_be_bytes();
            lines.extend(a.record(denial(&format!("10.{b}.{c}.{d}"), 80), now));
            if i % 10_000 == 9_999 {
                lines.extend(a.flush(now));
            }
        }
        lines.extend(a.flush(t0 + Duration::from_secs(21)));
        // Burst plus rate times 10 s, one folded line per flush, one overflow line per flush.
        assert!(lines.len() <= 50 + 200 + 11 + 11, "{} lines", lines.len());
        let total: u64 = lines.iter().map(|l| l.count).sum();
        assert_eq!(total, 100_000, "every denial is counted in some line");
        assert!(lines.iter().any(|l| l.rate_limited));
    }

    /// One revocation of 15,000 flows from one peer: one line and a summary, not 15,000.
    #[test]
    fn a_mass_termination_is_folded_too() {
        let mut a = Aggregator::new(Duration::from_secs(10), 4096, budget(20.0, 50.0));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for i in 0..15_000u64 {
            let r = AuditRecord {
                event: AuditEvent::Terminated,
                ..denial("10.0.0.9", 53)
            };
            lines.extend(a.record(r, t0 + Duration::from_micros(i)));
        }
        lines.extend(a.flush(t0 + Duration::from_secs(11)));
        assert_eq!(lines.len(), 2, "the first termination and the summary");
        assert_eq!(lines.iter().map(|l| l.count).sum::<u64>(), 15_000);
    }

    /// Each event kind has its own budget: a flood of denials does not silence terminations.
    #[test]
    fn event_kinds_have_separate_budgets() {
        let mut a = Aggregator::new(Duration::ZERO, 4096, budget(1.0, 2.0));
        let t0 = Instant::now();
        let written: usize = (0..100)
            .map(|i| a.record(denial("10.0.0.9", i), t0).len())
            .sum();
        assert_eq!(written, 2, "the burst");
        let terminated = AuditRecord {
            event: AuditEvent::Terminated,
            ..denial("10.0.0.9", 1)
        };
        assert_eq!(a.record(terminated, t0).len(), 1);
        // A second later the denials have one more line of budget.
        assert_eq!(
            a.record(denial("10.0.0.9", 7), t0 + Duration::from_secs(1))
                .len(),
            1
        );
        let folded = a.flush(t0 + Duration::from_secs(1));
        assert_eq!(folded.len(), 1);
        assert!(folded[0].rate_limited && folded[0].aggregated);
        assert_eq!(folded[0].count, 98);
        assert_eq!(folded[0].record.event, AuditEvent::Denied);
    }
}
