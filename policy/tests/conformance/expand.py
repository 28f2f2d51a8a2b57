#!/usr/bin/env python3
"""Expands each case's expected.txt into expected.json, the shape `portcullis matrix -o json` prints.

expected.txt is the truth table written by hand from the NetworkPolicy semantics, in the style
of the Kubernetes e2e `Reachability` helpers: start from everything allowed, then each line
    allow|deny FROM -> TO [on PORT/PROTO,...]
sets the cells it names (later lines win). FROM and TO are NS/POD with `*` for either part, or
`*` alone. A pod's traffic to itself is always allowed. This script knows nothing of policies,
so the expectations stay independent of the engine they check.

Usage: python3 policy/tests/conformance/expand.py            # rewrite every expected.json
       python3 policy/tests/conformance/expand.py --check    # exit 1 if any is out of date
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PODS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]
PROBES = [(port, proto) for port in (80, 81) for proto in ("TCP", "UDP", "SCTP")]


def matches(pattern, pod):
    if pattern == "*":
        return True
    ns, name = pattern.split("/")
    pns, pname = pod.split("/")
    return ns in ("*", pns) and name in ("*", pname)


def expand(text):
    cells = {(f, t, pr): True for f in PODS for t in PODS for pr in PROBES}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) not in (4, 6) or words[0] not in ("allow", "deny") or words[2] != "->":
            raise SystemExit(f"line {n}: cannot read {line!r}")
        allowed = words[0] == "allow"
        probes = PROBES
        if len(words) == 6:
            if words[4] != "on":
                raise SystemExit(f"line {n}: expected 'on PORT/PROTO,...' in {line!r}")
            probes = []
            for spec in words[5].split(","):
                port, proto = spec.split("/")
                probes.append((int(port), proto.upper()))
        for key in cells:
            f, t, pr = key
            if matches(words[1], f) and matches(words[3], t) and pr in probes:
                cells[key] = allowed
    for f in PODS:
        for pr in PROBES:
            cells[(f, f, pr)] = True
    entries = [
        {"from": f, "to": t, "port": pr[0], "protocol": pr[1], "allowed": cells[(f, t, pr)]}
        for pr in PROBES
        for f in PODS
        for t in PODS
    ]
    return '{"probes":[\n' + ",\n".join(json.dumps(e, separators=(",", ":")) for e in entries) + "\n]}\n"


def main():
    check = "--check" in sys.argv
    stale = []
    for case in sorted(os.listdir(HERE)):
        src = os.path.join(HERE, case, "expected.txt")
        if not os.path.isfile(src):
            continue
        out = os.path.join(HERE, case, "expected.json")
        with open(src) as fh:
            want = expand(fh.read())
        have = open(out).read() if os.path.exists(out) else None
        if have != want:
            stale.append(case)
            if not check:
                with open(out, "w") as fh:
                    fh.write(want)
    if check and stale:
        print("expected.json out of date (run expand.py):", ", ".join(stale))
        sys.exit(1)


if __name__ == "__main__":
    main()
