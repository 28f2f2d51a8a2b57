#!/usr/bin/env bash
# Validate the Portcullis manifests against the Kubernetes API schemas, offline.
#
#   manifests/validate.sh            # exit 0 when everything validates, non-zero otherwise
#   K8S_VERSION=1.34.0 manifests/validate.sh
#   VALIDATE_WITHOUT_KUBECTL=1 manifests/validate.sh   # the no-kubectl path
#
# What is checked (strict: unknown fields are errors):
# - the built variants, `kubectl kustomize manifests/` and `kubectl kustomize
#   manifests/cert-manager/`, when kubectl is installed (it builds offline); without kubectl,
#   every resource file under base/ and cert-manager/, and that each kustomization.yaml lists
#   files that exist;
# - the injector's golden patched pods (injector-webhook/tests/golden/*.json): what the webhook
#   produces must be a valid Pod;
# - cert-manager resources (no Kubernetes schema) against a small schema of the fields used;
# - manifests/monitoring (Prometheus Operator CRD subsets, the dashboard's ConfigMap) and that
#   the Grafana dashboard JSON parses (controller/tests/monitoring.rs checks its queries).
# manifests/examples/ is not checked here.
#
# Needs python3 with pip (kubernetes-validate and its PyYAML/jsonschema are installed if missing).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
version=${K8S_VERSION:-1.33.0}
py=${PYTHON:-python3}

if ! "$py" -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
    if ! "$py" -m pip --version >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "validate.sh: installing python3-pip with apt-get" >&2
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
        else
            echo "validate.sh: needs pip for $py (Debian: apt-get install python3-pip)" >&2
            exit 1
        fi
    fi
    echo "validate.sh: installing kubernetes-validate with pip" >&2
    "$py" -m pip install --quiet kubernetes-validate \
        || "$py" -m pip install --quiet --break-system-packages kubernetes-validate
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

inputs=()
if [ -z "${VALIDATE_WITHOUT_KUBECTL:-}" ] && command -v kubectl >/dev/null 2>&1; then
    mkdir "$tmp/kustomize"
    kubectl kustomize "$here" >"$tmp/kustomize/manifests.yaml"
    kubectl kustomize "$here/cert-manager" >"$tmp/kustomize/manifests-cert-manager.yaml"
    inputs+=("$tmp/kustomize/manifests.yaml" "$tmp/kustomize/manifests-cert-manager.yaml")
    mode=kustomize
else
    echo "validate.sh: kubectl not found; validating the resource files one by one" >&2
    while IFS= read -r f; do inputs+=("$f"); done < <(
        find "$here/base" "$here/cert-manager" -name '*.yaml' ! -name kustomization.yaml | sort)
    mode=static
fi
# The optional Prometheus Operator resources: checked against a subset of their CRDs below;
# with kubectl, as built (that includes the Grafana dashboard's generated ConfigMap).
if [ "$mode" = kustomize ]; then
    kubectl kustomize "$here/monitoring" >"$tmp/kustomize/manifests-monitoring.yaml"
    inputs+=("$tmp/kustomize/manifests-monitoring.yaml")
else
    for f in "$here"/monitoring/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] || inputs+=("$f")
    done
fi
inputs+=("$here/monitoring/grafana-dashboard.json")
for f in "$repo"/injector-webhook/tests/golden/*.json; do
    [ -e "$f" ] && inputs+=("$f")
done

"$py" - "$version" "$mode" "$here" "$tmp" "${inputs[@]}" <<'PY'
import json
import os
import sys

import jsonschema
import kubernetes_validate as kv
import yaml

version, mode, here, tmp = sys.argv[1:5]
files = sys.argv[5:]
failures = 0
checked = 0


def fail(msg):
    global failures
    failures += 1
    print(f"FAIL {msg}")


def obj(props, required=()):
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}


S = {"type": "string"}
ISSUER_REF = obj({"name": S, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": S}, ["name"])
PRIVATE_KEY = obj({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                   "encoding": {"enum": ["PKCS1", "PKCS8"]},
                   "rotationPolicy": {"enum": ["Never", "Always"]}})
META = {"type": "object", "required": ["name", "namespace"]}
# The fields of cert-manager.io/v1 that these manifests use (subset of the CRDs).
CERT_MANAGER = {
    "Issuer": obj({
        "apiVersion": {"const": "cert-manager.io/v1"}, "kind": S, "metadata": META,
        "spec": {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": {
            "selfSigned": {"type": "object"},
            "ca": obj({"secretName": S}, ["secretName"])},
            "additionalProperties": False},
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "Certificate": obj({
        "apiVersion": {"const": "cert-manager.io/v1"}, "kind": S, "metadata": META,
        "spec": obj({
            "secretName": S, "commonName": S, "isCA": {"type": "boolean"},
            "dnsNames": {"type": "array", "items": S},
            "duration": {"type": "string", "pattern": r"^[0-9]+(h|m|s)$"},
            "renewBefore": {"type": "string", "pattern": r"^[0-9]+(h|m|s)$"},
            "privateKey": PRIVATE_KEY,
            "usages": {"type": "array", "items": {"enum": [
                "server auth", "client auth", "digital signature", "key encipherment",
                "cert sign", "crl sign"]}},
            "issuerRef": ISSUER_REF,
        }, ["secretName", "issuerRef"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}

# The fields of monitoring.coreos.com/v1 that manifests/monitoring uses (subset of the CRDs).
MON_META = {"type": "object", "required": ["name"]}
ENDPOINT = obj({"port": S, "path": S, "interval": {"type": "string", "pattern": r"^[0-9]+(s|m)$"},
                "honorLabels": {"type": "boolean"}},
               ["port"])
LABEL_SELECTOR = obj({"matchLabels": {"type": "object", "additionalProperties": S}})
RULE = {"type": "object", "additionalProperties": False, "required": ["expr"],
        "properties": {"alert": S, "record": S, "expr": S,
                       "for": {"type": "string", "pattern": r"^[0-9]+(s|m|h)$"},
                       "labels": {"type": "object", "additionalProperties": S},
                       "annotations": {"type": "object", "additionalProperties": S}},
        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}
MONITORING = {
    "PodMonitor": obj({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": S, "metadata": MON_META,
        "spec": obj({
            "namespaceSelector": obj({"any": {"type": "boolean"},
                                      "matchNames": {"type": "array", "items": S}}),
            "selector": LABEL_SELECTOR,
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": ENDPOINT},
        }, ["selector", "podMetricsEndpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "PrometheusRule": obj({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": S, "metadata": MON_META,
        "spec": obj({"groups": {"type": "array", "minItems": 1, "items": obj({
            "name": S, "rules": {"type": "array", "minItems": 1, "items": RULE}},
            ["name", "rules"])}}, ["groups"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}


def documents(path):
    with open(path) as f:
        if path.endswith("grafana-dashboard.json"):
            # Not a Kubernetes object: it must parse, and have panels with queries.
            dash = json.load(f)
            if not dash.get("panels") or not dash.get("uid"):
                raise ValueError("a Grafana dashboard needs uid and panels")
            return
        if path.endswith(".json"):
            doc = json.load(f)
            # Pods made from a generateName have no name yet; the validator wants one.
            meta = doc.setdefault("metadata", {})
            meta.setdefault("name", meta.get("generateName", "pod") + "golden")
            yield doc
        else:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    yield doc


for path in files:
    name = os.path.relpath(path)
    if path.startswith(os.path.join(tmp, "kustomize")):
        name = "kubectl kustomize " + os.path.basename(path)[:-5].replace("-", "/", 1)
    try:
        docs = list(documents(path))
    except Exception as e:  # noqa: BLE001 - any parse error is a failure
        fail(f"{name}: cannot parse: {e}")
        continue
    for doc in docs:
        checked += 1
        kind = doc.get("kind", "?")
        what = f"{name}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
        api = doc.get("apiVersion", "")
        if api.startswith("cert-manager.io/") or api.startswith("monitoring.coreos.com/"):
            schema = (CERT_MANAGER if api.startswith("cert-manager.io/") else MONITORING).get(kind)
            if schema is None:
                fail(f"{what}: no schema for {api} {kind}")
                continue
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
            for e in errors:
                fail(f"{what}: {'/'.join(map(str, e.path))}: {e.message}")
            if not errors:
                print(f"ok   {what} ({api.split('/')[0]} subset)")
            continue
        try:
            kv.validate(doc, version, strict=True)
            print(f"ok   {what}")
        except kv.SchemaNotFoundError:
            fail(f"{what}: no Kubernetes {version} schema for {api} {kind}")
        except kv.ValidationError as e:
            path_ = "/".join(map(str, getattr(e, "path", [])))
            fail(f"{what}: {path_}: {e.message}")

if mode == "static":
    # Without kustomize, at least check that every kustomization lists existing files.
    for root, _, names in os.walk(here):
        if "kustomization.yaml" in names and "examples" not in root:
            k = yaml.safe_load(open(os.path.join(root, "kustomization.yaml")))
            for res in k.get("resources") or []:
                if not os.path.exists(os.path.join(root, res)):
                    fail(f"{os.path.relpath(root)}/kustomization.yaml: {res} does not exist")

print(f"validate.sh: {checked} resources checked against Kubernetes {version}, "
      f"{failures} failure(s)")
sys.exit(1 if failures else 0)
PY
