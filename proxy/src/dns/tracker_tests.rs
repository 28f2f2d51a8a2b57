use std::net::Ipv4Addr;

use hickory_proto::op::{OpCode, Query};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, Record};

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const POD: &str = "10.244.0.5:40000";
const DNS: &str = "10.96.0.10:53";

fn query(id: u16, name: &str) -> Vec<u8> {
    crate::resolve::query(id, name, RecordType::A).unwrap()
}

/// `www.example.com` CNAME `edge.cdn.example.net` (TTL 300) A 192.0.2.1, 192.0.2.2 (TTL 5).
fn answer(id: u16, question: &str) -> Vec<u8> {
    let q = Name::from_ascii(question).unwrap();
    let edge = Name::from_ascii("edge.cdn.example.net.").unwrap();
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(q.clone(), RecordType::A))
        .add_answer(Record::from_rdata(
            q,
            300,
            RData::CNAME(CNAME(edge.clone())),
        ))
        .add_answer(Record::from_rdata(
            edge.clone(),
            5,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ))
        .add_answer(Record::from_rdata(
            edge,
            5,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 2))),
        ));
    m.to_vec().unwrap()
}

fn everything(_: &str) -> bool {
    true
}

#[test]
fn a_solicited_trusted_answer_teaches_the_cname_chain_with_the_minimum_ttl() {
    let now = Instant::now();
    let mut t = Tracker::new(LearnedLimits::default());
    t.on_query(sa(POD), sa(DNS), &query(7, "WWW.example.com."), now);
    let only_cdn = |n: &str| n.ends_with(".cdn.example.net");
    let out = t.on_answer(
        sa(DNS),
        sa(POD),
        &answer(7, "www.example.com."),
        true,
        &only_cdn,
        now,
    );
    let AnswerOutcome::Learned { names, evicted: 0 } = out else {
        panic!("{out:?}");
    };
    assert_eq!(names.len(), 1);
    assert_eq!(names[0].0, "edge.cdn.example.net");
    assert_eq!(names[0].1.len(), 2);
    assert_eq!(t.learned().len(), 2);
    // The minimum TTL (30 s) applies over the record's 5 s.
    let entries = t.learned().entries();
    let expires = entries[0].1[0].expires;
    assert_eq!(expires.duration_since(now), portcullis_policy::dns::MIN_TTL);
    // Answered once: the same answer again is unsolicited.
    let again = t.on_answer(
        sa(DNS),
        sa(POD),
        &answer(7, "www.example.com."),
        true,
        &only_cdn,
        now,
    );
    assert_eq!(again, AnswerOutcome::Ignored(Ignored::Unsolicited));
}

#[test]
fn untrusted_spoofed_unsolicited_and_mismatched_answers_teach_nothing() {
    let now = Instant::now();
    let mut t = Tracker::new(LearnedLimits::default());
    t.on_query(sa(POD), sa(DNS), &query(9, "www.example.com."), now);
    let a = answer(9, "www.example.com.");
    let rogue = sa("10.244.0.66:53");
    assert_eq!(
        t.on_answer(rogue, sa(POD), &a, false, &everything, now),
        AnswerOutcome::Ignored(Ignored::Untrusted {
            resolver: rogue.ip()
        })
    );
    // Trusted address, but not the flow the query opened (another port of the pod).
    assert_eq!(
        t.on_answer(sa(DNS), sa("10.244.0.5:40001"), &a, true, &everything, now),
        AnswerOutcome::Ignored(Ignored::Unsolicited)
    );
    // Another id.
    assert_eq!(
        t.on_answer(
            sa(DNS),
            sa(POD),
            &answer(10, "www.example.com."),
            true,
            &everything,
            now
        ),
        AnswerOutcome::Ignored(Ignored::Unsolicited)
    );
    // Another question.
    assert_eq!(
        t.on_answer(
            sa(DNS),
            sa(POD),
            &answer(9, "evil.example.com."),
            true,
            &everything,
            now
        ),
        AnswerOutcome::Ignored(Ignored::QuestionMismatch)
    );
    assert_eq!(
        t.on_answer(sa(DNS), sa(POD), b"\x00\x09garbage", true, &everything, now),
        AnswerOutcome::Ignored(Ignored::Malformed)
    );
    // Too late.
    let late = now + QUERY_TIMEOUT;
    assert_eq!(
        t.on_answer(sa(DNS), sa(POD), &a, true, &everything, late),
        AnswerOutcome::Ignored(Ignored::Unsolicited)
    );
    assert!(t.learned().is_empty());
}

#[test]
fn names_no_rule_allows_are_not_learned_and_pending_queries_are_bounded() {
    let now = Instant::now();
    let mut t = Tracker::new(LearnedLimits::default());
    t.on_query(sa(POD), sa(DNS), &query(1, "www.example.com."), now);
    let out = t.on_answer(
        sa(DNS),
        sa(POD),
        &answer(1, "www.example.com."),
        true,
        &|_| false,
        now,
    );
    assert_eq!(out, AnswerOutcome::Ignored(Ignored::NotAllowed));
    for id in 0..(MAX_PENDING as u16 + 10) {
        t.on_query(sa(POD), sa(DNS), &query(id, "x.example.com."), now);
    }
    assert!(t.pending.len() <= MAX_PENDING);
    assert!(Ignored::Unsolicited.to_string().contains("nothing learned"));
}
