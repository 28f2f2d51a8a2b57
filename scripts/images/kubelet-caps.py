#!/usr/bin/env python3
"""OCI precreate hook (podman --hooks-dir): the capability sets a Kubernetes container gets.

The CRI (containerd, CRI-O) puts a container's capabilities in its bounding, permitted and
effective sets and never in the ambient or inheritable ones: a non-root process loses them at
exec unless its binary carries a file capability. Podman gives a non-root user the added
capabilities as ambient ones, which would hide a proxy binary without its file capability.
Reads the runtime config on stdin, writes it back with those two sets empty.
"""
import json
import sys

spec = json.load(sys.stdin)
caps = spec.get("process", {}).get("capabilities")
if caps is not None:
    caps["ambient"] = []
    caps["inheritable"] = []
json.dump(spec, sys.stdout)
