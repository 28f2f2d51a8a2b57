#!/usr/bin/env bash
# Serving certificates for portcullis-injector and portcullis-controller without cert-manager.
#
# Makes (or reuses) a CA with openssl, signs a serving certificate for the injector's Service and
# one for the controller's, and with --apply stores them (each with ca.crt) in the Secrets
# portcullis-injector-tls and portcullis-controller-tls and puts the CA into the caBundle of the
# MutatingWebhookConfiguration portcullis-injector. The injector hands the same CA to proxies,
# which verify the controller with it.
#
#   kubectl apply -k manifests/
#   manifests/plain-cert/gen-certs.sh --apply
#
# Rotation: run it again. The CA in --out is reused (the caBundle stays valid) and new serving
# certificates replace the Secrets; the injector and the controller reload them without a
# restart. Use --new-ca to replace the CA too (the caBundle is updated; the injector pods pick
# up the new Secret within about a minute, during which the API server may fail to reach them
# and admit pods without the proxy, per failurePolicy). Proxies injected before a --new-ca keep
# the old CA and cannot verify the controller until their pods are recreated.
#
# Options:
#   --out DIR        where to write ca.crt, ca.key, tls.crt, tls.key (injector) and
#                    controller.crt, controller.key (default: ./portcullis-certs)
#   --namespace NS   namespace of the injector and the controller (default: portcullis-system)
#   --service NAME   Service name of the injector (default: portcullis-injector)
#   --controller-service NAME
#                    Service name of the controller (default: portcullis-controller)
#   --days N         validity of the serving certificates (default: 365)
#   --ca-days N      validity of a new CA (default: 3650)
#   --new-ca         make a new CA even if DIR has one
#   --apply          write the Secrets and patch the caBundle with kubectl (current context)
#   -h, --help       this text
#
# Needs: openssl (1.1.1 or later), base64; kubectl for --apply. Keep ca.key private: whoever
# holds it can impersonate the webhook and the controller.
set -euo pipefail

out=./portcullis-certs
namespace=portcullis-system
service=portcullis-injector
webhook=portcullis-injector
secret=portcullis-injector-tls
controller_service=portcullis-controller
controller_secret=portcullis-controller-tls
days=365
ca_days=3650
new_ca=false
apply=false

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --namespace) namespace=$2; shift 2 ;;
        --service) service=$2; shift 2 ;;
        --controller-service) controller_service=$2; shift 2 ;;
        --days) days=$2; shift 2 ;;
        --ca-days) ca_days=$2; shift 2 ;;
        --new-ca) new_ca=true; shift ;;
        --apply) apply=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gen-certs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v openssl >/dev/null || { echo "gen-certs.sh: openssl is required" >&2; exit 1; }
if $apply; then
    command -v kubectl >/dev/null || { echo "gen-certs.sh: --apply needs kubectl" >&2; exit 1; }
fi

mkdir -p "$out"
chmod 700 "$out"
umask 077

if $new_ca || [ ! -s "$out/ca.crt" ] || [ ! -s "$out/ca.key" ]; then
    echo "gen-certs.sh: making a new CA in $out" >&2
    openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key.tmp"
    openssl pkcs8 -topk8 -nocrypt -in "$out/ca.key.tmp" -out "$out/ca.key"
    rm -f "$out/ca.key.tmp"
    openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$ca_days" \
        -subj "/O=Portcullis/CN=portcullis-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca.crt"
else
    echo "gen-certs.sh: reusing the CA in $out" >&2
fi

# serve NAME SERVICE: a serving certificate for SERVICE.NAMESPACE.svc (and .cluster.local),
# signed by the CA, in $out/NAME.crt and $out/NAME.key.
serve() {
    local name=$1 dns="$2.$namespace.svc"
    cat > "$out/$name.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$dns,DNS:$dns.cluster.local
EOF
    openssl ecparam -name prime256v1 -genkey -noout -out "$out/$name.key.tmp"
    openssl pkcs8 -topk8 -nocrypt -in "$out/$name.key.tmp" -out "$out/$name.key"
    rm -f "$out/$name.key.tmp"
    openssl req -new -key "$out/$name.key" -subj "/O=Portcullis/CN=$dns" -out "$out/$name.csr"
    openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -CAcreateserial -CAserial "$out/ca.srl" -sha256 -days "$days" \
        -extfile "$out/$name.ext" -out "$out/$name.crt" 2>/dev/null
    rm -f "$out/$name.csr" "$out/$name.ext"
    openssl verify -CAfile "$out/ca.crt" "$out/$name.crt" >/dev/null
    echo "gen-certs.sh: serving certificate for $dns valid $days days: $out/$name.crt" >&2
}

serve tls "$service"                      # the injector: tls.crt, tls.key
serve controller "$controller_service"    # the controller: controller.crt, controller.key

ca_bundle=$(base64 < "$out/ca.crt" | tr -d '\n')

if $apply; then
    # ca.crt too: the injector hands it to proxies to verify the controller.
    kubectl -n "$namespace" create secret generic "$secret" --type=kubernetes.io/tls \
        --from-file=tls.crt="$out/tls.crt" --from-file=tls.key="$out/tls.key" \
        --from-file=ca.crt="$out/ca.crt" \
        --dry-run=client -o yaml | kubectl apply -f -
    # The controller's Secret: the same layout (tls.crt, tls.key, ca.crt).
    kubectl -n "$namespace" create secret generic "$controller_secret" --type=kubernetes.io/tls \
        --from-file=tls.crt="$out/controller.crt" --from-file=tls.key="$out/controller.key" \
        --from-file=ca.crt="$out/ca.crt" \
        --dry-run=client -o yaml | kubectl apply -f -
    kubectl patch mutatingwebhookconfiguration "$webhook" --type=json \
        -p "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$ca_bundle\"}]"
    echo "gen-certs.sh: Secrets $namespace/$secret and $namespace/$controller_secret written," \
        "caBundle of $webhook set" >&2
else
    cat >&2 <<EOF
gen-certs.sh: files written; to install them (or run again with --apply):
  kubectl -n $namespace create secret generic $secret --type=kubernetes.io/tls \\
    --from-file=tls.crt=$out/tls.crt --from-file=tls.key=$out/tls.key --from-file=ca.crt=$out/ca.crt \\
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n $namespace create secret generic $controller_secret --type=kubernetes.io/tls \\
    --from-file=tls.crt=$out/controller.crt --from-file=tls.key=$out/controller.key --from-file=ca.crt=$out/ca.crt \\
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl patch mutatingwebhookconfiguration $webhook --type=json \\
    -p '[{"op":"add","path":"/webhooks/0/clientConfig/caBundle","value":"'"\$(base64 < $out/ca.crt | tr -d '\n')"'"}]'
EOF
fi
