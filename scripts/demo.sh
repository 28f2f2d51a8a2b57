#!/usr/bin/env bash
# The main job: the local demo cluster. Builds Portcullis, brings the bundled kangaroo example up
# in network namespaces (one per pod, with the real portcullis-init and portcullis-proxy in each),
# probes every pod and Service from every pod, connects through Services, resolves names under
# default-deny egress (allowed and denied), shows metrics, applies a policy change
# live, probes again, and takes everything down. Needs root (network namespaces, iptables inside
# them; the host's own interfaces and rules are never touched).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_rust
need_root "the demo" "$@"
need_packages ip:iproute2 iptables:iptables setpriv:util-linux dnsmasq:dnsmasq-base

say "building portcullis, portcullis-proxy, portcullis-init, portcullis-controller (release)"
cargo build --release --locked -q -p portcullis -p portcullis-proxy -p portcullis-init -p portcullis-controller
exec ./target/release/portcullis demo "$@"
