use serde_json::{json, Value};

use super::*;

fn review(request: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    }))
    .expect("json")
}

fn pod_request(object: Value) -> Value {
    json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop",
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": object,
        "oldObject": null,
        "dryRun": false
    })
}

fn simple_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-7d4b9c-", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    })
}

fn answer(body: &[u8], fail_closed: bool) -> (Reply, Value) {
    let parsed = parse_review(body).expect("parses");
    let reply = respond(
        &parsed,
        &NamespaceDefaults::Disabled,
        &InjectorConfig::default(),
        fail_closed,
    );
    let json =
        serde_json::from_slice(&encode_review(&reply.review).expect("encodes")).expect("json");
    (reply, json)
}

#[test]
fn injects_a_pod_and_echoes_the_uid() {
    let (reply, json) = answer(&review(pod_request(simple_pod())), false);
    assert_eq!(reply.result, ReviewResult::Injected(SidecarMode::Native));
    let resp = &json["response"];
    assert_eq!(json["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(json["kind"], "AdmissionReview");
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch: k8s_openapi::ByteString =
        serde_json::from_value(resp["patch"].clone()).expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch.0).expect("a JSONPatch");
    assert!(!patch.0.is_empty());
    assert!(resp.get("warnings").is_none());
    assert_eq!(resp["auditAnnotations"]["outcome"], "injected");
}

#[test]
fn parse_errors() {
    assert!(matches!(
        parse_review(b"not json"),
        Err(ParseError::Json(_))
    ));
    assert!(matches!(parse_review(b""), Err(ParseError::Json(_))));
    assert!(matches!(parse_review(b"[]"), Err(ParseError::Json(_))));
    let v1beta1 = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
        "request": pod_request(simple_pod())
    }))
    .expect("json");
    assert!(matches!(
        parse_review(&v1beta1),
        Err(ParseError::ApiVersion(_))
    ));
    let wrong_kind = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "Pod",
        "request": pod_request(simple_pod())
    }))
    .expect("json");
    assert!(matches!(
        parse_review(&wrong_kind),
        Err(ParseError::Kind(_))
    ));
    let no_request = br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#;
    assert!(matches!(
        parse_review(no_request),
        Err(ParseError::NoRequest)
    ));
    let mut req = pod_request(simple_pod());
    req["uid"] = json!("");
    assert!(matches!(
        parse_review(&review(req)),
        Err(ParseError::EmptyUid)
    ));
    let mut req = pod_request(simple_pod());
    req["operation"] = json!("EXPLODE");
    let err = parse_review(&review(req)).expect_err("bad operation");
    assert!(
        err.to_string().contains("not a valid AdmissionReview"),
        "{err}"
    );
}

#[test]
fn other_kinds_operations_and_subresources_are_ignored() {
    let mut deploy = pod_request(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d"}, "spec": {"replicas": "not a number"}}));
    deploy["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let (reply, json) = answer(&review(deploy), true);
    assert!(matches!(reply.result, ReviewResult::Ignored(_)));
    assert_eq!(json["response"]["allowed"], true);
    assert!(json["response"].get("patch").is_none());

    let mut update = pod_request(simple_pod());
    update["operation"] = json!("UPDATE");
    assert!(matches!(
        answer(&review(update), false).0.result,
        ReviewResult::Ignored(_)
    ));

    let mut sub = pod_request(simple_pod());
    sub["subResource"] = json!("status");
    sub["operation"] = json!("UPDATE");
    assert!(matches!(
        answer(&review(sub), false).0.result,
        ReviewResult::Ignored(_)
    ));
}

/// `kubectl debug` on a pod: an UPDATE of `pods/ephemeralcontainers` with the pod before and
/// after. `debugger` is the new ephemeral container; `proxy` says whether the pod runs ours.
fn debug_request(debugger: Value, proxy: bool) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "nginx"})];
    if proxy {
        containers.push(json!({"name": "portcullis-proxy", "image": "portcullis/proxy"}));
    }
    let old_debugger = json!({"name": "old", "image": "busybox",
        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}});
    let pod = |ephemeral: Vec<Value>| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"containers": containers, "ephemeralContainers": ephemeral}
        })
    };
    let mut req = pod_request(pod(vec![old_debugger.clone(), debugger]));
    req["operation"] = json!("UPDATE");
    req["subResource"] = json!("ephemeralcontainers");
    req["name"] = json!("web-0");
    req["oldObject"] = pod(vec![old_debugger]);
    req
}

#[test]
fn debug_containers_that_could_get_around_the_proxy_are_refused() {
    for (security, why) in [
        (
            json!({"capabilities": {"add": ["NET_ADMIN"]}}),
            "adds NET_ADMIN",
        ),
        (
            json!({"capabilities": {"add": ["CAP_NET_RAW"]}}),
            "adds NET_RAW",
        ),
        (json!({"capabilities": {"add": ["ALL"]}}), "adds NET_ADMIN"),
        (json!({"privileged": true}), "privileged"),
        (json!({"runAsUser": 2171}), "runs as UID 2171"),
    ] {
        let debugger = json!({"name": "debugger", "image": "busybox", "securityContext": security});
        let (reply, json) = answer(&review(debug_request(debugger, true)), false);
        let ReviewResult::Denied(message) = &reply.result else {
            panic!("{security}: {:?}", reply.result);
        };
        assert_eq!(json["response"]["allowed"], false, "{security}");
        assert!(message.contains("\"debugger\""), "{message}");
        assert!(message.contains(why), "{security}: {message}");
        // The one added before (NET_ADMIN) was admitted then; only the new one is judged.
        assert!(!message.contains("\"old\""), "{message}");
    }
}

#[test]
fn a_plain_debug_container_loses_net_raw_and_pods_without_the_proxy_are_left_alone() {
    let debugger = json!({"name": "debugger", "image": "busybox"});
    let (reply, json) = answer(&review(debug_request(debugger.clone(), true)), false);
    assert!(
        matches!(reply.result, ReviewResult::Ignored(_)),
        "{reply:?}"
    );
    assert_eq!(json["response"]["allowed"], true);
    let patch: k8s_openapi::ByteString =
        serde_json::from_value(json["response"]["patch"].clone()).expect("patch is base64");
    let ops: Value = serde_json::from_slice(&patch.0).expect("a JSONPatch");
    assert_eq!(
        ops,
        json!([{"op": "add", "path": "/spec/ephemeralContainers/1/securityContext",
            "value": {"capabilities": {"drop": ["NET_RAW"]}}}])
    );
    assert!(
        reply.warnings[0].contains("NET_RAW dropped"),
        "{:?}",
        reply.warnings
    );

    // Already dropping NET_RAW: admitted unchanged.
    let careful = json!({"name": "debugger", "image": "busybox",
        "securityContext": {"capabilities": {"drop": ["ALL"]}}});
    let (_, json) = answer(&review(debug_request(careful, true)), false);
    assert_eq!(json["response"]["allowed"], true);
    assert!(json["response"].get("patch").is_none());

    // No proxy in the pod: nothing to protect, even NET_ADMIN passes untouched.
    let admin = json!({"name": "debugger", "image": "busybox",
        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}});
    let (reply, json) = answer(&review(debug_request(admin, false)), true);
    assert!(
        matches!(reply.result, ReviewResult::Ignored(_)),
        "{reply:?}"
    );
    assert_eq!(json["response"]["allowed"], true);
    assert!(json["response"].get("patch").is_none());
}

#[test]
fn webhook_errors_admit_with_a_warning_or_deny_when_fail_closed() {
    // A CREATE of a Pod whose object is not a Pod (containers is not a list).
    let bad = pod_request(json!({"metadata": {"name": "x"}, "spec": {"containers": 5}}));
    let (reply, json) = answer(&review(bad.clone()), false);
    assert!(matches!(reply.result, ReviewResult::Error(_)));
    let resp = &json["response"];
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    let warning = resp["warnings"][0].as_str().expect("warning");
    assert!(
        warning.contains("WITHOUT the Portcullis proxy"),
        "{warning}"
    );

    let (reply, json) = answer(&review(bad), true);
    assert!(matches!(reply.result, ReviewResult::Error(_)));
    assert_eq!(json["response"]["allowed"], false);
    let msg = json["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(msg.contains("--fail-closed"), "{msg}");

    let mut no_object = pod_request(simple_pod());
    no_object["object"] = Value::Null;
    assert!(matches!(
        answer(&review(no_object), false).0.result,
        ReviewResult::Error(_)
    ));
}

#[test]
fn skipped_pods_carry_warnings_and_only_the_exemption() {
    let mut p = simple_pod();
    p["spec"]["hostNetwork"] = json!(true);
    let (reply, json) = answer(&review(pod_request(p.clone())), false);
    assert_eq!(reply.result, ReviewResult::Skipped(SkipReason::HostNetwork));
    assert_eq!(json["response"]["allowed"], true);
    assert_eq!(
        json["response"]["warnings"].as_array().map(Vec::len),
        Some(1)
    );
    let patch: k8s_openapi::ByteString =
        serde_json::from_value(json["response"]["patch"].clone()).expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch.0).expect("a JSONPatch");
    json_patch::patch(&mut p, &patch).expect("applies");
    assert_eq!(
        p["metadata"]["annotations"],
        json!({"portcullis.dev/exemptions": "not-injected"})
    );
    assert_eq!(reply.exemptions.as_deref(), Some("not-injected"));
}

#[test]
fn a_pod_running_as_the_proxy_uid_is_denied_with_the_reason() {
    let mut p = simple_pod();
    p["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 2171});
    let (reply, json) = answer(&review(pod_request(p)), false);
    assert!(matches!(reply.result, ReviewResult::Denied(_)));
    let resp = &json["response"];
    assert_eq!(resp["allowed"], false);
    assert!(resp.get("patch").is_none());
    let msg = resp["status"]["message"].as_str().expect("message");
    assert!(
        msg.contains("container \"app\"") && msg.contains("UID 2171"),
        "{msg}"
    );
    assert_eq!(resp["auditAnnotations"]["outcome"], "denied");
    // Even with --fail-closed off: this is policy, not a failure of the webhook.
}

#[test]
fn verify_patch_catches_patches_that_do_not_fit() {
    let object = json!({"spec": {"containers": [{"name": "a"}]}});
    let pod: Pod = serde_json::from_value(object.clone()).expect("pod");
    let d = crate::inject::decide(
        &pod,
        &NamespaceDefaults::Disabled,
        &InjectorConfig::default(),
    );
    let Outcome::Inject { patch, .. } = d.outcome else {
        panic!("inject")
    };
    // The typed pod has (default) metadata, the JSON object has none: the patch cannot apply.
    let err = verify_patch(&object, &patch, SidecarMode::Native).expect_err("must fail");
    assert!(err.to_string().contains("does not apply"), "{err}");
    // And a patch that applies but puts the proxy elsewhere is refused too.
    let with_meta = json!({"metadata": {}, "spec": {"containers": [{"name": "a"}]}});
    let err = verify_patch(&with_meta, &patch, SidecarMode::Classic).expect_err("must fail");
    assert!(err.to_string().contains("classic"), "{err}");
    verify_patch(&with_meta, &patch, SidecarMode::Native).expect("fits");
}

#[test]
fn names_for_logs() {
    let parsed = parse_review(&review(pod_request(simple_pod()))).expect("parses");
    assert_eq!(parsed.namespace(), Some("shop"));
    assert_eq!(parsed.pod_name(), "web-7d4b9c-");
}

#[test]
fn a_namespace_can_allow_privileged_debugging_and_says_so() {
    let debugger = json!({"name": "debugger", "image": "portcullis/init",
        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}});
    let parsed = parse_review(&review(debug_request(debugger, true))).expect("parses");
    let allowing = NamespaceDefaults::annotations(
        [(
            "portcullis.dev/allow-privileged-debug".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let reply = respond(&parsed, &allowing, &InjectorConfig::default(), true);
    assert!(
        matches!(reply.result, ReviewResult::Ignored(_)),
        "{reply:?}"
    );
    assert!(
        reply.warnings[0].contains("\"debugger\" (adds NET_ADMIN)"),
        "{:?}",
        reply.warnings
    );
    // Anything else than "true" (or another namespace annotation) does not allow it.
    let other = NamespaceDefaults::annotations(
        [(
            "portcullis.dev/allow-pod-overrides".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let reply = respond(&parsed, &other, &InjectorConfig::default(), true);
    assert!(matches!(reply.result, ReviewResult::Denied(_)), "{reply:?}");
}
