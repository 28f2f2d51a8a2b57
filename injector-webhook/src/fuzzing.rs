//! The property the fuzz target (`fuzz/fuzz_targets/parse_review.rs`) checks, kept in the
//! library so that ordinary tests compile and run it too.

use k8s_openapi::api::core::v1::Pod;

use crate::config::InjectorConfig;
use crate::inject::{decide, NamespaceDefaults, Outcome, SkipReason};
use crate::review::{encode_review, parse_review, respond, ReviewResult, Target};

/// Feed arbitrary bytes through the parser and the decision. Panics if an invariant breaks:
/// - parsing and answering never panic;
/// - a fail-open answer always admits (but for a policy refusal, which denies), and always
///   encodes;
/// - an injected pod's patch applies to the object, and the patched pod is then left alone
///   (idempotence under reinvocation).
pub fn check_admission_review(data: &[u8]) {
    let Ok(parsed) = parse_review(data) else {
        return;
    };
    let cfg = InjectorConfig::default();
    let namespace = match &parsed.target {
        // Use the pod's own annotations as namespace defaults too: more code paths.
        Target::Pod { pod, .. } => {
            NamespaceDefaults::annotations(pod.metadata.annotations.clone().unwrap_or_default())
        }
        _ => NamespaceDefaults::Disabled,
    };
    let reply = respond(&parsed, &namespace, &cfg, false);
    let response = reply.review.response.as_ref();
    let refused = matches!(reply.result, ReviewResult::Denied(_));
    assert!(
        response.is_some_and(|r| r.allowed != refused),
        "fail-open must admit all but policy refusals: {:?}",
        reply.result
    );
    let encoded = encode_review(&reply.review);
    assert!(encoded.is_ok(), "response must encode: {encoded:?}");

    let (ReviewResult::Injected(_), Target::Pod { object, .. }) = (&reply.result, &parsed.target)
    else {
        return;
    };
    let patch_bytes = response.and_then(|r| r.patch.as_ref());
    let patch: json_patch::Patch = match patch_bytes.map(|b| serde_json::from_slice(b)) {
        Some(Ok(p)) => p,
        other => panic!("injected without a readable patch: {other:?}"),
    };
    let mut doc = object.clone();
    if let Err(e) = json_patch::patch(&mut doc, &patch) {
        panic!("patch does not apply: {e}");
    }
    let patched: Pod = match serde_json::from_value(doc) {
        Ok(p) => p,
        Err(e) => panic!("patched object is not a Pod: {e}"),
    };
    let again = decide(&patched, &namespace, &cfg);
    assert_eq!(
        again.outcome,
        Outcome::Skip {
            reason: SkipReason::AlreadyInjected,
            patch: None
        },
        "second pass must leave the pod alone"
    );
}

#[cfg(test)]
mod tests {
    use super::check_admission_review;

    #[test]
    fn fuzz_property_holds_on_fixtures_and_their_truncations() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
            let data = std::fs::read(entry.expect("entry").path()).expect("fixture");
            check_admission_review(&data);
            for cut in (0..data.len()).step_by(97) {
                check_admission_review(&data[..cut]);
            }
            n += 1;
        }
        assert!(n >= 4);
        check_admission_review(b"");
        check_admission_review(b"\xff\xfe");
        check_admission_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":{"metadata":{},"spec":{"containers":[{"name":"a"}]}}}}"#);
    }
}
