#!/usr/bin/python3
"""The deployment files under deploy/ are checked as far as this machine
allows (no Docker engine, no Kubernetes cluster, no systemd as init):

- every nginx config passes `nginx -t` (host names mapped to 127.0.0.1,
  certificates and log paths to a temp dir);
- the systemd units pass `systemd-analyze verify` (apart from the binaries
  not being installed under /usr/local/bin);
- the Kubernetes manifests build with `kubectl kustomize` and agree with each
  other (selectors, HPA targets, grace periods longer than the drain);
- the compose file parses and its delivery services get a stop grace period
  longer than their drain;
- every --flag the files pass to fanout-ingest / fanout-delivery exists in
  that binary's --help."""

import os
import re
import shutil
import subprocess
import tempfile

from fanout_test import SOURCE_DIR, find_binary, log, run_tests

DEPLOY = os.path.join(SOURCE_DIR, "deploy")

try:
    import yaml
except ImportError:  # python3-yaml: present on Debian with most tool sets
    yaml = None


def read(*parts):
    with open(os.path.join(DEPLOY, *parts)) as f:
        return f.read()


def nginx_t(http_text, tmp, wrap_http=True):
    """nginx -t on a config (an http-context file when wrap_http)."""
    os.makedirs(os.path.join(tmp, "logs"), exist_ok=True)
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=60)
    text = re.sub(r"[a-z0-9-]+\.fanout\.internal", "127.0.0.1", http_text)
    text = re.sub(r"server (delivery|ingest)-(\d):", r"server 127.0.0.\2:", text)
    text = text.replace("/etc/ssl/fanout/fullchain.pem", cert)
    text = text.replace("/etc/ssl/fanout/privkey.pem", key)
    text = text.replace("/var/log/nginx/", tmp + "/logs/")
    text = text.replace("/dev/stdout", tmp + "/logs/stdout.log")
    if wrap_http:
        text = "events {}\nhttp {\n%s\n}\n" % text
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write("pid %s/nginx.pid;\nerror_log %s/logs/error.log;\n%s" % (tmp, tmp, text)
                if wrap_http else text.replace("events {", "pid %s/nginx.pid;\nevents {" % tmp, 1))
    r = subprocess.run(["nginx", "-t", "-p", tmp, "-c", conf, "-e", "stderr"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, "nginx -t failed:\n%s\n--- config:\n%s" % (r.stderr, text)


def test_nginx_production_config():
    tmp = tempfile.mkdtemp(prefix="fanout-nginx-t-")
    try:
        nginx_t(read("nginx", "fanout.conf"), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_nginx_compose_config():
    tmp = tempfile.mkdtemp(prefix="fanout-nginx-t-")
    try:
        nginx_t(read("compose", "nginx.conf"), tmp, wrap_http=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_nginx_local_template():
    import cluster
    tmp = tempfile.mkdtemp(prefix="fanout-nginx-t-")
    try:
        os.makedirs(os.path.join(tmp, "tmp"))
        conf = os.path.join(tmp, "nginx.conf")
        cluster.render_nginx(cluster.TEMPLATE, conf, {
            "DIR": tmp, "LISTEN": "127.0.0.1:1", "WORKERS": "auto", "WORKER_CONNECTIONS": "1024",
            "USER_LINE": "", "DELIVERY_SERVERS": "server 127.0.0.1:2;",
            "INGEST_SERVERS": "server 127.0.0.1:3;"})
        r = subprocess.run(["nginx", "-t", "-p", tmp, "-c", conf, "-e", "stderr"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_systemd_units():
    if shutil.which("systemd-analyze") is None:
        log("systemd-analyze not installed: unit files not verified")
        return
    tmp = tempfile.mkdtemp(prefix="fanout-units-")
    try:
        for name, inst in (("fanout-ingest.service", "fanout-ingest.service"),
                           ("fanout-delivery@.service", "fanout-delivery@1.service")):
            path = os.path.join(tmp, inst)
            shutil.copy(os.path.join(DEPLOY, "systemd", name), path)
            r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                               text=True, timeout=60)
            problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                        if ln.strip() and "is not executable" not in ln]
            assert not problems, "%s: %s" % (name, problems)
        for name in ("fanout-ingest.service", "fanout-delivery@.service"):
            text = read("systemd", name)
            assert "LimitNOFILE=" in text and "KillSignal=SIGTERM" in text, name
            stop = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))
            drain = int(re.search(r"--(?:drain|shutdown)-timeout-ms (\d+)", text).group(1))
            assert stop * 1000 > drain + 5000, "%s: TimeoutStopSec must outlast the drain" % name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def k8s_docs():
    if yaml is None:
        return None
    docs = []
    for name in sorted(os.listdir(os.path.join(DEPLOY, "k8s"))):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(read("k8s", name)) if d]
    return docs


def test_k8s_manifests():
    if shutil.which("kubectl"):
        r = subprocess.run(["kubectl", "kustomize", os.path.join(DEPLOY, "k8s")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    docs = k8s_docs()
    if docs is None:
        log("python3-yaml missing: manifests not cross-checked")
        return
    by_kind = {}
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deps = by_kind["Deployment"]
    assert set(deps) == {"fanout-ingest", "fanout-delivery"}, list(deps)
    for name, dep in deps.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        sel = dep["spec"]["selector"]["matchLabels"]
        assert all(labels.get(k) == v for k, v in sel.items()), name
        spec = dep["spec"]["template"]["spec"]
        c = spec["containers"][0]
        args = " ".join(c.get("args", []))
        m = re.search(r"--(?:drain|shutdown)-timeout-ms[= ](\d+)", args)
        assert m, "%s: no drain/shutdown timeout in args" % name
        pre = c["lifecycle"]["preStop"]["exec"]["command"]
        pre_s = int(pre[-1]) if pre[0].endswith("sleep") else 0
        assert spec["terminationGracePeriodSeconds"] > pre_s + int(m.group(1)) / 1000, (
            "%s: the grace period must cover preStop + drain" % name)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
    for name, svc in by_kind["Service"].items():
        assert any(all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v
                       for k, v in svc["spec"]["selector"].items())
                   for dep in deps.values()), "service %s selects no pods" % name
    for name, hpa in by_kind["HorizontalPodAutoscaler"].items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deps, name
    metrics = {n: [m.get("pods", {}).get("metric", {}).get("name") or m["type"]
                   for m in h["spec"]["metrics"]]
               for n, h in by_kind["HorizontalPodAutoscaler"].items()}
    assert "fanout_delivery_connections" in metrics["fanout-delivery"], metrics
    assert "Resource" in metrics["fanout-ingest"], metrics
    pdbs = by_kind["PodDisruptionBudget"]
    assert "fanout-delivery" in pdbs, list(pdbs)
    for name, pdb in pdbs.items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                       for k, v in sel.items()) for d in deps.values()), name


def test_compose_file():
    if yaml is None:
        log("python3-yaml missing: compose file not checked")
        return
    d = yaml.safe_load(read("compose", "compose.yaml"))
    svcs = d["services"]
    for s in ("redis", "kafka", "kafka-topics", "ingest-1", "ingest-2", "delivery-1",
              "delivery-2", "delivery-3", "nginx"):
        assert s in svcs, s
    ids = set()
    for n in ("delivery-1", "delivery-2", "delivery-3"):
        s = svcs[n]
        cmd = s["command"]
        ids.add(cmd[cmd.index("--server-id") + 1])
        drain = int(cmd[cmd.index("--drain-timeout-ms") + 1])
        grace = int(s["stop_grace_period"].rstrip("s"))
        assert grace * 1000 > drain, "%s: stop_grace_period must outlast the drain" % n
    assert len(ids) == 3, "server ids must differ: %s" % ids
    assert "apache/kafka" in svcs["kafka"]["image"]


def test_flags_exist():
    """Every --flag given to our binaries in deploy/ is one they know."""
    helps = {}
    for b in ("fanout-ingest", "fanout-delivery"):
        helps[b] = subprocess.run([find_binary(b), "--help"], capture_output=True, text=True,
                                  timeout=10).stdout
    files = [os.path.join(DEPLOY, "systemd", f) for f in os.listdir(os.path.join(DEPLOY, "systemd"))]
    files += [os.path.join(DEPLOY, "k8s", f) for f in os.listdir(os.path.join(DEPLOY, "k8s"))]
    files += [os.path.join(DEPLOY, "compose", "compose.yaml"),
              os.path.join(DEPLOY, "local", "cluster")]
    files += [os.path.join(SOURCE_DIR, "tests", "e2e", "cluster.py")]
    checked = 0
    names = "|".join(re.escape(b) for b in helps)
    for path in files:
        with open(path) as f:
            text = f.read()
        # A binary's flags: what follows its name up to a blank line or the
        # other binary's name.
        for chunk in re.split(r"\n\s*\n", text):
            parts = re.split("(%s)" % names, chunk)
            for binary, seg in zip(parts[1::2], parts[2::2]):
                for flag in re.findall(r"--([a-z][a-z0-9-]+)", seg):
                    if flag in ("help", "check-config") or flag.startswith("from-"):
                        continue
                    checked += 1
                    assert "--" + flag in helps[binary], "%s: %s has no --%s" % (
                        os.path.relpath(path, SOURCE_DIR), binary, flag)
    log("%d flags checked against --help" % checked)
    assert checked > 10, checked


if __name__ == "__main__":
    run_tests(globals())
