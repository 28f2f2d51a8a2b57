#!/usr/bin/env bash
# Checks the alerting rules with Prometheus' own tools (Debian package `prometheus`):
# `promtool check rules` on the rule groups of prometheusrule.yaml, then `promtool test rules`
# on tests/*.test.yaml (alerts evaluated by Prometheus' engine on series written as the shipped
# PodMonitors scrape them). Exit non-zero on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v promtool >/dev/null 2>&1; then
    echo "check.sh: promtool not found (Debian: apt-get install prometheus)" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The PrometheusRule's spec is a Prometheus rule file.
python3 - "$here/prometheusrule.yaml" "$work/rules.yaml" <<'PY'
import sys, yaml
with open(sys.argv[1]) as f:
    rule = yaml.safe_load(f)
with open(sys.argv[2], "w") as f:
    yaml.safe_dump({"groups": rule["spec"]["groups"]}, f, sort_keys=False)
PY
promtool check rules "$work/rules.yaml"
cp "$here"/tests/*.test.yaml "$work/"
cd "$work"
promtool test rules ./*.test.yaml
