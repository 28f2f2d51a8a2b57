//! Queries the pod sent and the answers that may teach: pure logic over datagram payloads
//! (`hickory-proto` decodes them), time passed in. [`super::reader`] feeds it from the queue.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use portcullis_policy::dns::{normalize, LearnedLimits, LearnedNames};

/// Queries waiting for their answer, per pod; beyond it the oldest is forgotten.
pub const MAX_PENDING: usize = 1024;
/// How long a query waits for its answer (resolvers retry long before).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// CNAME hops followed inside one response.
const MAX_CHAIN: usize = 16;

/// A query the pod sent: its flow (the pod's socket and the server it asked) and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct QueryKey {
    client: SocketAddr,
    server: SocketAddr,
    id: u16,
}

#[derive(Debug, Clone)]
struct Pending {
    name: String,
    qtype: RecordType,
    sent: Instant,
}

/// Why an answer taught nothing (the audit line says it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Not from a resolver the pod's proxy trusts (the kube-dns Service, `--dns-resolvers`).
    Untrusted { resolver: IpAddr },
    /// No query of the pod with this id is waiting on this flow (spoofed, late or repeated).
    Unsolicited,
    /// The answer's question is not the query's.
    QuestionMismatch,
    /// Not a DNS response `hickory-proto` can read.
    Malformed,
    /// The resolver answered with an error (`NXDOMAIN`, ...): nothing to learn.
    Error(ResponseCode),
    /// No name of the answer is one the pod's `domainNames` rules allow.
    NotAllowed,
}

impl Ignored {
    /// A stable label for metrics and audit lines.
    pub fn label(&self) -> &'static str {
        match self {
            Ignored::Untrusted { .. } => "untrusted_resolver",
            Ignored::Unsolicited => "unsolicited",
            Ignored::QuestionMismatch => "question_mismatch",
            Ignored::Malformed => "malformed",
            Ignored::Error(_) => "error_response",
            Ignored::NotAllowed => "name_not_allowed",
        }
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::Untrusted { resolver } => write!(
                f,
                "answer from {resolver}, not a trusted resolver (the kube-dns Service or \
                 --dns-resolvers): nothing learned"
            ),
            Ignored::Unsolicited => write!(
                f,
                "no query of this pod with that id waits on this flow: nothing learned"
            ),
            Ignored::QuestionMismatch => {
                write!(
                    f,
                    "the answer's question is not the query's: nothing learned"
                )
            }
            Ignored::Malformed => write!(f, "not a readable DNS response: nothing learned"),
            Ignored::Error(code) => write!(f, "the resolver answered {code}"),
            Ignored::NotAllowed => write!(f, "no domainNames rule of the pod allows the name"),
        }
    }
}

/// What an answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerOutcome {
    /// These (name, addresses) pairs were learned; `evicted` pairs made room.
    Learned {
        names: Vec<(String, Vec<IpAddr>)>,
        evicted: u64,
    },
    Ignored(Ignored),
}

/// One pod's pending queries and learned names.
#[derive(Debug)]
pub struct Tracker {
    pending: HashMap<QueryKey, Pending>,
    learned: LearnedNames,
}

impl Tracker {
    pub fn new(limits: LearnedLimits) -> Self {
        Tracker {
            pending: HashMap::new(),
            learned: LearnedNames::new(limits),
        }
    }

    pub fn learned(&self) -> &LearnedNames {
        &self.learned
    }

    /// Records a query the pod sent from `client` to `server`. Anything that is not a
    /// single-question query is not recorded (its answer will teach nothing).
    pub fn on_query(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) {
        let Ok(msg) = Message::from_vec(payload) else {
            return;
        };
        let [q] = msg.queries() else {
            return;
        };
        if msg.message_type() != MessageType::Query {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending
                .retain(|_, p| now.duration_since(p.sent) < QUERY_TIMEOUT);
            if self.pending.len() >= MAX_PENDING {
                if let Some(oldest) = self
                    .pending
                    .iter()
                    .min_by_key(|(_, p)| p.sent)
                    .map(|(k, _)| *k)
                {
                    self.pending.remove(&oldest);
                }
            }
        }
        let key = QueryKey {
            client,
            server,
            id: msg.id(),
        };
        let name = normalize(&q.name().to_ascii());
        self.pending.insert(
            key,
            Pending {
                name,
                qtype: q.query_type(),
                sent: now,
            },
        );
    }

    /// Judges an answer from `server` to the pod's `client` socket: it teaches only when
    /// `trusted`, solicited on that flow with that id and question; then the addresses of
    /// every name of the answer's CNAME chain that `allowed` accepts are learned.
    pub fn on_answer(
        &mut self,
        server: SocketAddr,
        client: SocketAddr,
        payload: &[u8],
        trusted: bool,
        allowed: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> AnswerOutcome {
        let ignored = AnswerOutcome::Ignored;
        let Ok(msg) = Message::from_vec(payload) else {
            return ignored(Ignored::Malformed);
        };
        if msg.message_type() != MessageType::Response {
            return ignored(Ignored::Malformed);
        }
        if !trusted {
            return ignored(Ignored::Untrusted {
                resolver: server.ip(),
            });
        }
        let key = QueryKey {
            client,
            server,
            id: msg.id(),
        };
        let Some(pending) = self.pending.get(&key) else {
            return ignored(Ignored::Unsolicited);
        };
        if now.duration_since(pending.sent) >= QUERY_TIMEOUT {
            self.pending.remove(&key);
            return ignored(Ignored::Unsolicited);
        }
        let question = msg
            .queries()
            .first()
            .map(|q| (normalize(&q.name().to_ascii()), q.query_type()));
        if question.as_ref() != Some(&(pending.name.clone(), pending.qtype)) {
            return ignored(Ignored::QuestionMismatch);
        }
        let Some(pending) = self.pending.remove(&key) else {
            return ignored(Ignored::Unsolicited);
        };
        if msg.response_code() != ResponseCode::NoError {
            return ignored(Ignored::Error(msg.response_code()));
        }
        self.learn(&msg, &pending.name, allowed, now)
    }

    /// Follows the CNAME chain from `question` inside `msg` and learns its addresses under
    /// every name of the chain that `allowed` accepts, for the chain's smallest TTL.
    fn learn(
        &mut self,
        msg: &Message,
        question: &str,
        allowed: &dyn Fn(&str) -> bool,
        now: Instant,
    ) -> AnswerOutcome {
        let mut chain = vec![question.to_string()];
        let mut ttl = u32::MAX;
        let mut ips = Vec::new();
        for _ in 0..MAX_CHAIN {
            let Some(current) = chain.last().cloned() else {
                break;
            };
            let mut next = None;
            for r in msg.answers() {
                if normalize(&r.name().to_ascii()) != current {
                    continue;
                }
                match r.data() {
                    RData::A(a) => {
                        ips.push(IpAddr::V4(a.0));
                        ttl = ttl.min(r.ttl());
                    }
                    RData::AAAA(a) => {
                        ips.push(IpAddr::V6(a.0));
                        ttl = ttl.min(r.ttl());
                    }
                    RData::CNAME(c) if next.is_none() => {
                        next = Some(normalize(&c.0.to_ascii()));
                        ttl = ttl.min(r.ttl());
                    }
                    _ => {}
                }
            }
            match next {
                Some(n) if !chain.contains(&n) => chain.push(n),
                _ => break,
            }
        }
        let names: Vec<String> = chain.into_iter().filter(|n| allowed(n)).collect();
        if names.is_empty() || ips.is_empty() {
            return AnswerOutcome::Ignored(Ignored::NotAllowed);
        }
        let ttl = Duration::from_secs(u64::from(ttl));
        let mut evicted = 0;
        for name in &names {
            for ip in &ips {
                evicted += self.learned.insert(name, *ip, ttl, now);
            }
        }
        AnswerOutcome::Learned {
            names: names.into_iter().map(|n| (n, ips.clone())).collect(),
            evicted,
        }
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
