//! The DNS queue's reader: one OS thread, like [`crate::queue::reader`], on NFQUEUE
//! `DNS_NFQUEUE` (4172), with the whole datagram copied. Queries (hook `OUTPUT`) are recorded,
//! then judged as any flow ([`crate::queue::reader::judge`]); answers (hook `INPUT`, replies
//! conntrack ties to a query flow the pod opened) are learned from and then accepted: the
//! verdict waits for the learned set, so the connect that follows cannot race it.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict as NfVerdict};
use portcullis_contract::DNS_NFQUEUE;
use portcullis_policy::{Direction, PodTable};

use super::{AnswerOutcome, Ignored};
use crate::context::Context;
use crate::queue::packet;
use crate::queue::reader::{direction_of, judge, Verdict};
use crate::store::Services;

/// Pairs the per-pod bound evicted before they expired.
pub const DNS_LEARNED_EVICTIONS: &str = "portcullis_dns_learned_evictions_total";
/// Answers that taught nothing, by reason.
pub const DNS_ANSWERS_IGNORED: &str = "portcullis_dns_answers_ignored_total";
/// How long the answer's verdict waited for learning (the latency DNS policy adds).
pub const DNS_LEARN_SECONDS: &str = "portcullis_dns_learn_seconds";

/// The whole datagram (a DNS message over UDP is at most 65,535 bytes).
const COPY_RANGE: u16 = u16::MAX;

/// Binds the DNS queue and starts its reader thread (a failure is a start error).
pub fn start(ctx: &Arc<Context>) -> anyhow::Result<()> {
    let mut queue = crate::queue::reader::bind(DNS_NFQUEUE)?;
    queue.set_copy_range(DNS_NFQUEUE, COPY_RANGE)?;
    let ctx = ctx.clone();
    std::thread::Builder::new()
        .name("dns-queue".into())
        .spawn(move || {
            let e = run(queue, &ctx);
            tracing::error!(event = "fatal", error = %e, "the DNS queue socket failed");
            eprintln!("portcullis-proxy: DNS learning stopped: {e}");
            std::process::exit(1);
        })?;
    Ok(())
}

fn run(mut queue: Queue, ctx: &Context) -> io::Error {
    let mut errors = 0u32;
    loop {
        let mut msg = match queue.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                errors += 1;
                if errors >= 100 {
                    return e;
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        errors = 0;
        let verdict = on_packet(ctx, msg.get_hook(), msg.get_payload());
        msg.set_verdict(if verdict.accepts() {
            NfVerdict::Accept
        } else {
            NfVerdict::Drop
        });
        if let Err(e) = queue.verdict(msg) {
            tracing::error!(event = "queue_error", operation = "dns_verdict", error = %e);
        }
    }
}

/// Whether the pod's table has an Admin-tier `domainNames` rule (else nothing is tracked).
fn has_domain_rules(table: &PodTable) -> bool {
    table.egress.admin.iter().any(|r| !r.domains.is_empty())
}

/// One queued DNS datagram: a query is recorded then judged as any flow; an answer is learned
/// from, then accepted (it is a reply on a flow the query opened and the queue accepted).
pub fn on_packet(ctx: &Context, hook: u8, payload: &[u8]) -> Verdict {
    let Some(direction) = direction_of(hook) else {
        return Verdict::Drop;
    };
    let snapshot = ctx.store.current();
    let table = snapshot.as_ref().map(|s| s.table.clone());
    let parsed = packet::udp_payload(payload);
    match direction {
        Direction::Egress => {
            if let (Some(t), Ok((flow, dns))) = (&table, &parsed) {
                if has_domain_rules(t) {
                    let now = Instant::now();
                    ctx.dns
                        .with(|tr| tr.on_query(flow.source, flow.destination, dns, now));
                }
            }
            judge(ctx, hook, payload)
        }
        Direction::Ingress => {
            if let (Some(t), Ok((flow, dns))) = (&table, &parsed) {
                if has_domain_rules(t) {
                    learn(ctx, t, flow, dns);
                }
            }
            Verdict::Accept
        }
    }
}

fn learn(ctx: &Context, table: &PodTable, flow: &packet::Flow, dns: &[u8]) {
    let started = Instant::now();
    let trusted = trusted(&ctx.dns.resolvers, &ctx.store.services(), flow.source.ip());
    let allowed = |name: &str| {
        table
            .egress
            .admin
            .iter()
            .any(|r| r.domains.iter().any(|d| d.matches(name)))
    };
    let outcome = ctx.dns.with(|t| {
        t.on_answer(
            flow.source,
            flow.destination,
            dns,
            trusted,
            &allowed,
            started,
        )
    });
    metrics::histogram!(DNS_LEARN_SECONDS).record(started.elapsed().as_secs_f64());
    match outcome {
        AnswerOutcome::Learned { names, evicted } => {
            if evicted > 0 {
                metrics::counter!(DNS_LEARNED_EVICTIONS).increment(evicted);
            }
            for (name, ips) in names {
                tracing::info!(
                    event = "dns_learned",
                    pod = %ctx.pod,
                    name = %name,
                    addresses = ?ips,
                    resolver = %flow.source,
                );
            }
        }
        // Answers for names no rule allows are the common case: not worth a line each.
        AnswerOutcome::Ignored(Ignored::NotAllowed | Ignored::Error(_)) => {}
        AnswerOutcome::Ignored(why) => {
            metrics::counter!(DNS_ANSWERS_IGNORED, "reason" => why.label()).increment(1);
            tracing::warn!(
                event = "dns_answer_ignored",
                pod = %ctx.pod,
                reason = why.label(),
                resolver = %flow.source,
                destination = %flow.destination,
                why = %why,
            );
        }
    }
}

/// A resolver whose answers teach: `--dns-resolvers`, or a ClusterIP or endpoint of the
/// `kube-system/kube-dns` Service (as the controller streams the Services).
pub fn trusted(configured: &[IpAddr], services: &Services, source: IpAddr) -> bool {
    let source = source.to_canonical();
    if configured.contains(&source) {
        return true;
    }
    services
        .map
        .services
        .get(portcullis_contract::KUBE_DNS_SERVICE)
        .is_some_and(|s| {
            s.cluster_ips.contains(&source)
                || s.ports
                    .iter()
                    .any(|p| p.backends.iter().any(|b| b.ip == source))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::service::{Backend, ResolvedPort, ResolvedService, ServiceMap};
    use portcullis_policy::Protocol;

    #[test]
    fn the_kube_dns_service_and_configured_resolvers_are_trusted_nothing_else() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let backend = Backend {
            ip: ip("10.244.0.53"),
            port: 53,
            pod: None,
            ready: true,
            serving: true,
            terminating: false,
        };
        let mut map = ServiceMap::default();
        map.services.insert(
            portcullis_contract::KUBE_DNS_SERVICE.to_string(),
            ResolvedService {
                cluster_ips: vec![ip("10.96.0.10")],
                ports: vec![ResolvedPort {
                    name: None,
                    protocol: Protocol::Udp,
                    port: 53,
                    backends: vec![backend],
                }],
            },
        );
        let services = Services::new(map);
        let configured = [ip("192.0.2.53")];
        for ok in [
            "10.96.0.10",
            "10.244.0.53",
            "192.0.2.53",
            "::ffff:10.96.0.10",
        ] {
            assert!(trusted(&configured, &services, ip(ok)), "{ok}");
        }
        for rogue in ["10.244.0.66", "8.8.8.8"] {
            assert!(!trusted(&configured, &services, ip(rogue)), "{rogue}");
        }
        assert!(!trusted(&[], &Services::default(), ip("10.96.0.10")));
    }
}
