#!/usr/bin/env python3
"""The injected pod, run for real (`scripts/images.sh pod`).

1. A testbed (`portcullis testbed up`) gives the node and pod network namespaces, the peers and
   their servers; the sample pod is annotated `portcullis.dev/inject: disabled` in the testbed's
   copy only, so the testbed starts nothing of its own in it.
2. portcullis-injector runs from its image; the sample pod goes to it as an AdmissionReview over
   HTTPS, as the API server sends it, and the returned JSONPatch is applied (RFC 6902).
3. The patched pod's containers run from the images with podman and runc in the pod's network
   namespace, each with exactly its patched securityContext, env, args and volumes, in the
   kubelet's order: init containers to completion, a native sidecar (restartPolicy Always) until
   its startupProbe passes, then the app. portcullis-controller runs from its image in the node
   namespace (file mode, TLS) and streams the proxy its table.
4. Checks: the app's probes (an allowed and a denied TCP connection, an allowed and a denied UDP
   datagram) and the proxy's audit lines, read with `podman logs` as `kubectl logs` would.

Everything it starts (containers, namespaces through `testbed down`) is removed on exit.
"""

import argparse
import copy
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
INJECTOR_NAME = "portcullis-injector.portcullis-system.svc"
INJECT_ANNOTATION = "portcullis.dev/inject"
# The capabilities containerd's CRI gives a container before securityContext drops and adds
# (podman's own default set differs: no NET_RAW, MKNOD, AUDIT_WRITE).
CRI_DEFAULT_CAPS = [
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
]
CAP_BITS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13,
    "SYS_CHROOT": 18, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}
# Marks containers for the precreate hook (kubelet-caps.py) that empties the ambient and
# inheritable sets, as the CRI does: a non-root process keeps capabilities in its bounding set
# only (podman would make them ambient).
CAPS_ANNOTATION = "dev.portcullis.kubelet-caps=true"


def log(msg):
    print(f"pod: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, capture=False, **kw):
    res = subprocess.run(cmd, text=True, capture_output=capture, **kw)
    if check and res.returncode != 0:
        out = (res.stdout or "") + (res.stderr or "") if capture else ""
        raise SystemExit(f"pod: failed ({res.returncode}): {' '.join(cmd)}\n{out}")
    return res


# ---------------------------------------------------------------- JSON Patch (RFC 6902)

def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc, parts):
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc


def apply_patch(doc, patch):
    """Applies a JSONPatch; raises on any operation it cannot apply, as the API server would."""
    doc = copy.deepcopy(doc)
    for op in patch:
        parts = _pointer(op["path"])
        kind = op["op"]
        if kind in ("add", "replace", "copy", "move"):
            if kind == "copy":
                value = copy.deepcopy(_get(doc, _pointer(op["from"])))
            elif kind == "move":
                value = _remove(doc, _pointer(op["from"]))
            else:
                value = op["value"]
            if not parts:
                doc = value
                continue
            parent = _parent(doc, parts)
            key = parts[-1]
            if isinstance(parent, list):
                if key == "-":
                    parent.append(value)
                elif kind == "replace":
                    parent[int(key)] = value
                else:
                    parent.insert(int(key), value)
            else:
                if kind == "replace" and key not in parent:
                    raise ValueError(f"replace of missing {op['path']}")
                parent[key] = value
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "test":
            if _get(doc, parts) != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        else:
            raise ValueError(f"unknown op {kind}")
    return doc


def _get(doc, parts):
    for p in parts:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc


def _remove(doc, parts):
    parent = _parent(doc, parts)
    key = parts[-1]
    return parent.pop(int(key)) if isinstance(parent, list) else parent.pop(key)


# ---------------------------------------------------------------- the API server's side

def admission_review(pod):
    meta = pod["metadata"]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": meta["name"],
            "namespace": meta["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def https_post(host, port, server_name, ca, path, body):
    """POST over TLS, verifying `server_name` against `ca` (the webhook's caBundle)."""
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            head = (
                f"POST {path}?timeout=10s HTTP/1.1\r\nHost: {server_name}:{port}\r\n"
                "Content-Type: application/json\r\nAccept: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            s.sendall(head.encode() + body)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        rest = out
    return status, rest


def cmd_admit(args):
    """(In the node namespace.) Sends the pod to the injector and prints the patched pod."""
    with open(args.pod) as f:
        pod = json.load(f)
    review = admission_review(pod)
    deadline = time.time() + 30
    while True:
        try:
            status, body = https_post(
                "127.0.0.1", args.port, INJECTOR_NAME, args.ca, "/mutate",
                json.dumps(review).encode())
            break
        except (ConnectionError, OSError) as e:
            if time.time() > deadline:
                raise SystemExit(f"pod: the injector does not answer: {e}")
            time.sleep(0.2)
    if status != 200:
        raise SystemExit(f"pod: the injector answered {status}: {body[:500]!r}")
    answer = json.loads(body)
    resp = answer["response"]
    assert answer["kind"] == "AdmissionReview", answer
    assert resp["uid"] == review["request"]["uid"], resp
    assert resp["allowed"] is True, resp
    assert resp.get("patchType") == "JSONPatch", resp
    import base64
    patch = json.loads(base64.b64decode(resp["patch"]))
    patched = apply_patch(pod, patch)
    for w in resp.get("warnings") or []:
        log(f"injector warning: {w}")
    json.dump(patched, sys.stdout, indent=2)


def cmd_http_get(args):
    """(In the node namespace.) A kubelet httpGet probe: exit 0 on 200-399."""
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as r:
            sys.exit(0 if 200 <= r.status < 400 else 1)
    except Exception:
        sys.exit(1)


# ---------------------------------------------------------------- the kubelet's side

class Kubelet:
    def __init__(self, args, pod, pod_netns, node_netns, workdir):
        self.args = args
        self.pod = pod
        self.netns = pod_netns
        self.node = node_netns
        self.work = workdir
        self.podman = args.podman.split() + ["--hooks-dir", args.hooks_dir]
        self.prefix = f"pc-img-{pod['metadata']['name']}"
        self.volumes = {}

    def field(self, path):
        meta, status, spec = self.pod["metadata"], self.pod.get("status", {}), self.pod["spec"]
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.hostIP": status.get("hostIP", ""),
            "status.podIP": status.get("podIP", ""),
            "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs", [])),
        }
        if path not in fields:
            raise SystemExit(f"pod: fieldRef {path} is not supported here")
        return fields[path]

    def env(self, c):
        out = []
        for e in c.get("env", []):
            if "value" in e:
                out.append((e["name"], e["value"]))
            elif "fieldRef" in e.get("valueFrom", {}):
                out.append((e["name"], self.field(e["valueFrom"]["fieldRef"]["fieldPath"])))
            else:
                raise SystemExit(f"pod: env {e['name']}: only value and fieldRef are supported")
        if c.get("envFrom"):
            raise SystemExit("pod: envFrom is not supported here")
        return out

    def volume(self, name):
        """A pod volume as podman --mount arguments' source: made once per pod."""
        if name in self.volumes:
            return self.volumes[name]
        vol = next(v for v in self.pod["spec"].get("volumes", []) if v["name"] == name)
        if "emptyDir" in vol:
            ed = vol["emptyDir"]
            opts = "type=tmpfs,tmpfs-mode=1777"
            if ed.get("sizeLimit"):
                opts += f",tmpfs-size={ed['sizeLimit'].replace('Mi', 'm').replace('Ki', 'k')}"
            if ed.get("medium") != "Memory":
                d = os.path.join(self.work, "volumes", name)
                os.makedirs(d, mode=0o777, exist_ok=True)
                os.chmod(d, 0o777)
                opts = f"type=bind,source={d}"
        elif "projected" in vol:
            d = os.path.join(self.work, "volumes", name)
            os.makedirs(d, exist_ok=True)
            for src in vol["projected"]["sources"]:
                if "serviceAccountToken" in src:
                    # File mode: the controller checks no token (no API server for TokenReview).
                    path = os.path.join(d, src["serviceAccountToken"]["path"])
                    with open(path, "w") as f:
                        f.write("testbed-token-" + src["serviceAccountToken"].get("audience", ""))
                    os.chmod(path, 0o644)
                else:
                    raise SystemExit(f"pod: projected source {list(src)} is not supported here")
            opts = f"type=bind,source={d}"
        else:
            raise SystemExit(f"pod: volume {name}: only emptyDir and projected tokens here")
        self.volumes[name] = opts
        return opts

    def security(self, c, image_user):
        """podman flags for the effective securityContext (container over pod)."""
        psc = self.pod["spec"].get("securityContext", {})
        sc = c.get("securityContext", {})
        flags = []
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        gid = sc.get("runAsGroup", psc.get("runAsGroup"))
        if uid is None:
            uid = int(image_user.split(":")[0]) if image_user else 0
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) and uid == 0:
            raise SystemExit(f"pod: {c['name']}: runAsNonRoot but the user is root")
        flags += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        if sc.get("privileged"):
            flags.append("--privileged")
        caps = sc.get("capabilities", {})
        drop = [x.upper() for x in caps.get("drop", [])]
        add = [x.upper() for x in caps.get("add", [])]
        keep = [] if "ALL" in drop else [x for x in CRI_DEFAULT_CAPS if x not in drop]
        flags += ["--cap-drop", "all"]
        for cap in sorted(set(keep + add)):
            flags += ["--cap-add", cap]
        flags += ["--annotation", CAPS_ANNOTATION]
        if sc.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        if sc.get("readOnlyRootFilesystem"):
            flags += ["--read-only", "--read-only-tmpfs=false"]
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp == "Unconfined":
            flags += ["--security-opt", "seccomp=unconfined"]
        elif seccomp not in (None, "RuntimeDefault"):
            raise SystemExit(f"pod: seccomp {seccomp} is not supported here")
        return flags

    def expected(self, c):
        """What /proc/PID/status must say of the container's process (securityContext)."""
        psc = self.pod["spec"].get("securityContext", {})
        sc = c.get("securityContext", {})
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        gid = sc.get("runAsGroup", psc.get("runAsGroup"))
        if uid is None:
            uid, _, g = self.image_user(c["image"]).partition(":")
            gid = gid if gid is not None else (g or uid or 0)
        caps = sc.get("capabilities", {})
        drop = [x.upper() for x in caps.get("drop", [])]
        keep = [] if "ALL" in drop else [x for x in CRI_DEFAULT_CAPS if x not in drop]
        bounding = sum(1 << CAP_BITS[x] for x in set(keep + [a.upper() for a in caps.get("add", [])]))
        return {
            "Uid": int(uid), "Gid": int(gid),
            "NoNewPrivs": 0 if sc.get("allowPrivilegeEscalation", True) else 1,
            "CapBnd": bounding, "CapAmb": 0,
        }

    def verify(self, c, status_text, read_only_root):
        """Compares a process's status with the securityContext; returns what differs."""
        got = {}
        for line in status_text.splitlines():
            key, _, value = line.partition(":")
            fields = value.split()
            if key in ("Uid", "Gid") and fields:
                got[key] = int(fields[0])
            elif key == "NoNewPrivs" and fields:
                got[key] = int(fields[0])
            elif key.startswith("Cap") and fields:
                got[key] = int(fields[0], 16)
        want = self.expected(c)
        diff = [f"{k}: got {got.get(k)!r}, want {v!r}" for k, v in want.items() if got.get(k) != v]
        if got.get("CapPrm", 0) & ~want["CapBnd"]:
            diff.append(f"CapPrm {got['CapPrm']:#x} outside the bounding set")
        ro = c.get("securityContext", {}).get("readOnlyRootFilesystem", False)
        if read_only_root != ro:
            diff.append(f"read-only root: got {read_only_root}, want {ro}")
        log(f"{c['name']}: " + ", ".join(
            f"{k}={got.get(k):#x}" if k.startswith("Cap") else f"{k}={got.get(k)}"
            for k in ("Uid", "Gid", "NoNewPrivs", "CapBnd", "CapPrm", "CapEff", "CapAmb"))
            + f", read-only root={read_only_root}")
        return diff

    def verify_running(self, c, name):
        pid = run(self.podman + ["inspect", "--format", "{{.State.Pid}}", name],
                  capture=True).stdout.strip()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/mountinfo") as f:
            root = next(line.split() for line in f if line.split()[4] == "/")
        return self.verify(c, status, "ro" in root[5].split(","))

    def file_capability_used(self, name):
        pid = run(self.podman + ["inspect", "--format", "{{.State.Pid}}", name],
                  capture=True).stdout.strip()
        with open(f"/proc/{pid}/status") as f:
            prm = next(int(line.split()[1], 16) for line in f if line.startswith("CapPrm:"))
        if prm & (1 << CAP_BITS["NET_ADMIN"]):
            return []
        return [f"{name}: NET_ADMIN not permitted (file capability lost?)"]

    def image_user(self, image):
        out = run(self.podman + ["image", "inspect", "--format", "{{.Config.User}}", image],
                  capture=True).stdout.strip()
        return out

    def create(self, c):
        name = f"{self.prefix}-{c['name']}"
        image = c["image"]
        flags = [
            "--name", name, "--network", f"ns:/var/run/netns/{self.netns}",
            "--hostname", self.pod["metadata"]["name"], "--pull", "never",
        ] + self.args.run_flags.split()
        flags += self.security(c, self.image_user(image))
        for k, v in self.env(c):
            flags += ["--env", f"{k}={v}"]
        for m in c.get("volumeMounts", []):
            opts = self.volume(m["name"]) + f",destination={m['mountPath']}"
            if m.get("readOnly"):
                opts += ",ro=true"
            flags += ["--mount", opts]
        if c.get("command"):
            flags += ["--entrypoint", json.dumps(c["command"])]
        run(self.podman + ["create"] + flags + [image] + c.get("args", []), capture=True)
        return name

    def probe(self, c, kind):
        p = c.get(kind)
        if not p:
            return True
        if "httpGet" not in p:
            raise SystemExit(f"pod: {c['name']}: only httpGet probes are supported here")
        url = f"http://{self.pod['status']['podIP']}:{p['httpGet']['port']}{p['httpGet'].get('path', '/')}"
        period = p.get("periodSeconds", 10)
        for attempt in range(p.get("failureThreshold", 3)):
            res = run(["ip", "netns", "exec", self.node, sys.executable, __file__, "http-get",
                       url, "--timeout", str(p.get("timeoutSeconds", 1))], check=False)
            if res.returncode == 0:
                return attempt + 1
            time.sleep(period)
        return 0


def testbed_up(args, workdir, pod):
    """The testbed's copy of the manifests: the sample pod annotated so it runs no proxy."""
    mdir = os.path.join(workdir, "manifests")
    os.makedirs(mdir, exist_ok=True)
    shutil.copy(os.path.join(HERE, "cluster.yaml"), mdir)
    tb = copy.deepcopy(pod)
    tb["metadata"].setdefault("annotations", {})[INJECT_ANNOTATION] = "disabled"
    with open(os.path.join(mdir, "app.json"), "w") as f:
        json.dump(tb, f, indent=2)
    out = run([args.cli, "testbed", "up", "--name", args.testbed, "--policy-source", "dir",
               "-f", mdir], capture=True)
    log(out.stdout.strip())
    node, netns = None, {}
    for line in out.stdout.splitlines():
        words = line.split()
        if "node namespace" in line:
            node = words[-1]
        if "netns" in words:
            netns[words[0]] = words[words.index("netns") + 1]
    key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
    if node is None or key not in netns:
        raise SystemExit(f"pod: cannot find the node or {key} in `testbed up`'s output")
    return mdir, node, netns[key]


def start_service(args, podman, name, image, node, mounts, extra):
    """The injector or the controller from its image in the node namespace, as its Deployment
    runs it: the image's user, no capability, no privilege escalation, read-only root."""
    cmd = podman + ["run", "-d", "--name", name, "--pull", "never",
                    "--network", f"ns:/var/run/netns/{node}", "--cap-drop", "all",
                    "--security-opt", "no-new-privileges", "--read-only",
                    "--read-only-tmpfs=false"] + args.run_flags.split()
    for src, dst in mounts:
        cmd += ["--mount", f"type=bind,source={src},destination={dst},ro=true"]
    run(cmd + [image] + extra, capture=True)


def wait_http(node, url, what, seconds=30):
    deadline = time.time() + seconds
    while run(["ip", "netns", "exec", node, sys.executable, __file__, "http-get", url],
              check=False).returncode != 0:
        if time.time() > deadline:
            raise SystemExit(f"pod: {what} is not ready after {seconds}s ({url})")
        time.sleep(0.2)


def make_certs(workdir):
    certs = os.path.join(workdir, "certs")
    run([os.path.join(HERE, "..", "..", "manifests", "plain-cert", "gen-certs.sh"),
         "--out", certs], capture=True)
    for f in os.listdir(certs):
        os.chmod(os.path.join(certs, f), 0o644)  # read by the images' non-root users
    os.chmod(certs, 0o755)
    return certs


def cmd_run(args):
    workdir = args.work
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(HERE, "app.json")) as f:
        pod = json.load(f)
    podman = args.podman.split() + ["--hooks-dir", args.hooks_dir]
    certs = make_certs(workdir)
    mdir, node, pod_netns = testbed_up(args, workdir, pod)

    # The API server calls the webhook: the real injector, from its image, over HTTPS.
    injector = "pc-img-injector"
    start_service(args, podman, injector, args.injector_image, node, [(certs, "/certs")], [
        "--tls-cert", "/certs/tls.crt", "--tls-key", "/certs/tls.key",
        "--controller-ca-file", "/certs/ca.crt", "--namespace-defaults=false"])
    in_pod = os.path.join(workdir, "pod.json")
    with open(in_pod, "w") as f:
        json.dump(pod, f)
    patched_text = run(["ip", "netns", "exec", node, sys.executable, __file__, "admit",
                        in_pod, "--ca", os.path.join(certs, "ca.crt")], capture=True).stdout
    run(podman + ["rm", "-f", "-t", "2", injector], capture=True)
    patched = json.loads(patched_text)
    with open(os.path.join(workdir, "patched.json"), "w") as f:
        f.write(patched_text)
    log("the injector patched the pod: init containers "
        + ", ".join(c["name"] for c in patched["spec"].get("initContainers", []))
        + "; containers " + ", ".join(c["name"] for c in patched["spec"]["containers"]))

    # The controller, from its image, in the node namespace (the address the pod reaches).
    start_service(args, podman, "pc-img-controller", args.controller_image, node,
                  [(certs, "/certs"), (mdir, "/policy")], [
                      "--policy-dir", "/policy", "--listen", "0.0.0.0:8443",
                      "--admin-listen", "0.0.0.0:9990", "--tls-cert", "/certs/controller.crt",
                      "--tls-key", "/certs/controller.key", "--poll-interval", "100ms"])
    wait_http(node, "http://127.0.0.1:9990/ready", "portcullis-controller")

    k = Kubelet(args, patched, pod_netns, node, workdir)
    results = run_pod(k)
    check(results, k)


def run_pod(k):
    """The kubelet's order: init containers in turn (sidecars until started), then the app."""
    spec = k.pod["spec"]
    problems = []
    for c in spec.get("initContainers", []):
        name = k.create(c)
        if c.get("restartPolicy") == "Always":
            run(k.podman + ["start", name], capture=True)
            tries = k.probe(c, "startupProbe")
            if not tries:
                logs = run(k.podman + ["logs", name], capture=True, check=False)
                raise SystemExit(f"pod: {name}: startupProbe failed\n{logs.stdout}{logs.stderr}")
            log(f"{c['name']} (native sidecar) started: startupProbe passed after {tries} tries")
            problems += k.verify_running(c, name)
            if c["name"] == "portcullis-proxy" and ("PORTCULLIS_ENFORCE_UDP", "true") in k.env(c):
                # Non-root, no ambient capability: NET_ADMIN can only come from the binary's
                # file capability (cap_net_admin=p), which must have survived into the layer.
                problems += k.file_capability_used(name)
        else:
            res = run(k.podman + ["start", "--attach", name], capture=True, check=False)
            code = run(k.podman + ["inspect", "--format", "{{.State.ExitCode}}", name],
                       capture=True).stdout.strip()
            log(f"{c['name']} (init) exited {code}: {(res.stdout + res.stderr).strip()}")
            if code != "0":
                raise SystemExit(f"pod: init container {c['name']} failed")
    outputs = {}
    for c in spec["containers"]:
        name = k.create(c)
        run(k.podman + ["start", "--attach", name], capture=True, check=False)
        outputs[c["name"]] = run(k.podman + ["logs", name], capture=True).stdout
        log(f"{c['name']} said:\n{outputs[c['name']]}")
        # The sample app reports its own /proc/self/status and whether it can write to /.
        problems += k.verify(c, outputs[c["name"]], "root writable" not in outputs[c["name"]])
    if problems:
        raise SystemExit("pod: the processes do not run as their securityContext says:\n  "
                         + "\n  ".join(problems))
    return outputs


def check(outputs, k):
    """What the app saw and what the proxy's log says, as `kubectl logs` shows it."""
    said = dict(
        line.split(": ", 1) for line in outputs["app"].splitlines() if ": " in line)
    failures = []
    for proto in ("tcp", "udp"):
        if "shop/allowed" not in said.get(f"{proto} allowed", ""):
            failures.append(f"{proto} to shop/allowed got {said.get(f'{proto} allowed')!r}")
        if "shop/denied" in said.get(f"{proto} denied", "shop/denied"):
            failures.append(f"{proto} to shop/denied got {said.get(f'{proto} denied')!r}")
    proxy = f"{k.prefix}-portcullis-proxy"
    logs = run(k.podman + ["logs", proxy], capture=True)
    events = []
    for line in (logs.stdout + logs.stderr).splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    denied = k.pod["spec"]["containers"][0]
    denied_ip = next(e["value"] for e in denied["env"] if e["name"] == "DENIED")
    for proto in ("TCP", "UDP"):
        hits = [e for e in events if e.get("event") == "connection_denied"
                and str(e.get("protocol", "")).upper() == proto
                and e.get("dst_ip") == denied_ip]
        if hits:
            log(f"audit line ({proto}): {json.dumps(hits[0])}")
        else:
            failures.append(f"no {proto} connection_denied audit line for {denied_ip}")
    if failures:
        tail = "\n".join((logs.stdout + logs.stderr).splitlines()[-30:])
        raise SystemExit("pod: FAILED:\n  " + "\n  ".join(failures) + f"\nproxy log:\n{tail}")
    log("ok: allowed TCP and UDP answered, denied TCP and UDP refused, both audited")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cli", required=True)
    r.add_argument("--testbed", default="images")
    r.add_argument("--work", required=True)
    r.add_argument("--podman", required=True)
    r.add_argument("--run-flags", default="")
    r.add_argument("--hooks-dir", required=True)
    r.add_argument("--injector-image", required=True)
    r.add_argument("--controller-image", required=True)
    a = sub.add_parser("admit")
    a.add_argument("pod")
    a.add_argument("--ca", required=True)
    a.add_argument("--port", type=int, default=8443)
    g = sub.add_parser("http-get")
    g.add_argument("url")
    g.add_argument("--timeout", type=float, default=1)
    args = ap.parse_args()
    {"run": cmd_run, "admit": cmd_admit, "http-get": cmd_http_get}[args.cmd](args)


if __name__ == "__main__":
    main()
