#!/usr/bin/env bash
# Runs every test of the workspace on this machine, installing what the tests use first.
# Needs root: the proxy, init and testbed tests build real network namespaces and iptables rules
# (only inside namespaces they create; the host's own rules are never touched).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_rust
need_root "the test suite" "$@"
need_packages ip:iproute2 iptables:iptables setpriv:util-linux dnsmasq:dnsmasq-base python3:python3 haproxy:haproxy conntrack:conntrack setcap:libcap2-bin promtool:prometheus nft:nftables

say "checking conformance fixtures are expanded from their hand-written truth tables"
python3 policy/tests/conformance/expand.py --check

say "checking the alerting rules with promtool (check rules, test rules)"
manifests/monitoring/check.sh

if [ -x manifests/validate.sh ]; then
    say "validating manifests against the Kubernetes API schemas"
    manifests/validate.sh
fi

say "cargo test --workspace"
cargo test --workspace --locked "$@"
