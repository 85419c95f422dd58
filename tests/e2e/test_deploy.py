#!/usr/bin/python3
"""The deployment files under deploy/ are checked as far as this machine
allows (no Docker engine, no Kubernetes cluster, no systemd as init):

- every nginx config passes `nginx -t` (host names mapped to 127.0.0.1,
  certificates and log paths to a temp dir);
- the systemd units pass `systemd-analyze verify` (apart from the binaries
  not being installed under /usr/local/bin);
- the Kubernetes manifests build with `kubectl kustomize` (reported SKIP,
  exit 77, where kubectl is not installed) and agree with each other
  (selectors, HPA targets, grace periods longer than the drain);
- the compose file parses and its delivery services get a stop grace period
  longer than their drain;
- every --flag the files pass to fanout-ingest / fanout-delivery exists in
  that binary's --help;
- security properties of the examples: no nginx or ingress log format with
  the query string (it carries client tokens), /ws error logs at emerg,
  nothing proxies /metrics, one Secret per tier, Redis with a password,
  NetworkPolicies that keep Redis and Kafka to the fanout pods, Origin
  allow-lists set, JWT secret placeholders of 32+ bytes.

tests/e2e/test_nginx_logs.py runs the nginx configs against failing
upstreams and checks their log files for the token."""

import os
import re
import shutil
import socket
import subprocess
import tempfile

from fanout_test import (SOURCE_DIR, Proc, Skip, find_binary, free_port, log, run_tests,
                         scaled, wait_port)

DEPLOY = os.path.join(SOURCE_DIR, "deploy")

try:
    import yaml
except ImportError:  # python3-yaml: deploy/install-deps.sh installs it
    yaml = None

NGINX_CONFIGS = [("nginx", "fanout.conf"), ("compose", "nginx.conf"), ("local", "nginx.conf.in")]


def need_yaml():
    # A missing parser must fail the checks, not skip them.
    assert yaml is not None, "python3-yaml missing: run deploy/install-deps.sh"


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
    # deploy/install-deps.sh installs systemd (systemd-analyze verify works
    # without systemd as init): missing, it fails rather than passing unchecked.
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: run deploy/install-deps.sh"
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


K8S_DIRS = ("k8s", "k8s-without-keda")


def k8s_docs(all_files=False, variant="k8s"):
    """The manifests a kustomization applies (variant "k8s": kubectl apply -k
    deploy/k8s, with KEDA; "k8s-without-keda": the same with the plain
    delivery HPA instead of the ScaledObject), as kustomize would assemble
    them from the files (resources, and patches that delete an object);
    all_files: every .yaml of both directories, the examples applied
    separately too."""
    need_yaml()
    if all_files:
        docs = []
        for d in K8S_DIRS:
            for name in sorted(os.listdir(os.path.join(DEPLOY, d))):
                if name.endswith(".yaml") and name != "kustomization.yaml":
                    docs += [x for x in yaml.safe_load_all(read(d, name)) if x]
        return docs
    kz = yaml.safe_load(read(variant, "kustomization.yaml"))
    docs = []
    for res in kz["resources"]:
        if os.path.isdir(os.path.join(DEPLOY, variant, res)):
            docs += k8s_docs(variant=os.path.normpath(os.path.join(variant, res)))
        else:
            docs += [d for d in yaml.safe_load_all(read(variant, res)) if d]
    for p in kz.get("patches", []):
        patch = yaml.safe_load(p["patch"])
        assert patch.get("$patch") == "delete", p  # the only kind of patch used here
        key = (patch["kind"], patch["metadata"]["name"])
        before = len(docs)
        docs = [d for d in docs if (d["kind"], d["metadata"]["name"]) != key]
        assert len(docs) == before - 1, "%s: the patch deletes nothing: %s" % (variant, key)
    return docs


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return out


def test_k8s_kustomize_builds():
    # Debian 12's kubernetes-client (1.20) conflicts with the kubectl package
    # some machines carry, so install-deps.sh does not install one: without
    # kubectl this check is reported SKIP (exit 77), never a pass.
    if shutil.which("kubectl") is None:
        raise Skip("kubectl not installed: `kubectl kustomize deploy/k8s` not run")
    for variant in K8S_DIRS:
        r = subprocess.run(["kubectl", "kustomize", os.path.join(DEPLOY, variant)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        built = [d for d in yaml.safe_load_all(r.stdout) if d]
        # The build is what the files say (k8s_docs), plus the sidecar's
        # generated ConfigMap, whose hashed name the Deployment refers to.
        key = lambda d: (d["kind"], d["metadata"]["name"])
        gen = [d for d in built if d["kind"] == "ConfigMap" and
               d["metadata"]["name"].startswith("fanout-pod-deletion-cost-")]
        assert len(gen) == 1, [key(d) for d in built]
        assert "pod-deletion-cost.sh" in gen[0]["data"], gen[0]["data"].keys()
        assert gen[0]["data"]["pod-deletion-cost.sh"] == read("k8s", "pod-deletion-cost.sh")
        assert sorted(map(key, built)) == sorted(map(key, k8s_docs(variant=variant) + gen)), (
            variant, sorted(map(key, built)))
        dep = by_kind(built)["Deployment"]["fanout-delivery"]["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in dep["volumes"]}
        assert vols["pod-deletion-cost"]["configMap"]["name"] == gen[0]["metadata"]["name"]


def test_k8s_manifests():
    for d in k8s_docs(all_files=True):
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
    docs = k8s_docs()
    kinds = by_kind(docs)
    deps = kinds["Deployment"]
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
        assert spec["terminationGracePeriodSeconds"] >= pre_s + int(m.group(1)) / 1000 + 10, (
            "%s: the grace period must cover preStop + drain + 10 s" % name)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
    for name, svc in kinds["Service"].items():
        assert any(all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v
                       for k, v in svc["spec"]["selector"].items())
                   for dep in deps.values()), "service %s selects no pods" % name
    pdbs = kinds["PodDisruptionBudget"]
    assert "fanout-delivery" in pdbs, list(pdbs)
    for name, pdb in pdbs.items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                       for k, v in sel.items()) for d in deps.values()), name


def autoscalers(docs):
    """{Deployment name: [(kind, object)]} of the HPAs and KEDA
    ScaledObjects in docs."""
    out = {}
    for d in docs:
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            out.setdefault(d["spec"]["scaleTargetRef"]["name"], []).append((d["kind"], d))
    return out


def delivery_arg(name, default):
    """A delivery setting as deploy/k8s gives it (args, env), else its default."""
    c = by_kind(k8s_docs())["Deployment"]["fanout-delivery"]["spec"]["template"]["spec"][
        "containers"][0]
    for a in c.get("args", []):
        if a.startswith("--%s=" % name):
            return a.split("=", 1)[1]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    return env.get("FANOUT_" + name.upper().replace("-", "_"), default)


def scale_down_is_slow(behavior, what):
    down = behavior["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300, what
    for pol in down["policies"]:
        assert pol["type"] == "Pods" and pol["value"] <= 4 and pol["periodSeconds"] >= 60, (
            what, pol)


def test_k8s_autoscaling():
    """Each variant has exactly one autoscaler per Deployment: ingest's HPA on
    CPU; delivery's KEDA ScaledObject (connections from Prometheus, the users
    group's lag from Kafka) in deploy/k8s, or the plain HPA on the two
    adapter metrics in deploy/k8s-without-keda. Never more replicas than
    fanout.users has partitions (a count with many divisors); slow
    scale-down; the lag trigger names the group, topic and brokers delivery
    really uses; both variants use the same thresholds; the adapter rules
    serve the HPA's metrics."""
    need_yaml()
    topics = re.search(r"for t in ([^;]+); do", read("k8s", "topics-job.yaml")).group(1).split()
    parts = re.findall(r"--partitions (\d+)", read("k8s", "topics-job.yaml"))
    assert len(parts) == 1 and "fanout.users" in topics, (parts, topics)  # one count, all topics
    partitions = int(parts[0])
    divisors = [d for d in range(1, partitions + 1) if partitions % d == 0]
    assert len(divisors) >= 10, (partitions, divisors)

    keda = autoscalers(k8s_docs())
    plain = autoscalers(k8s_docs(variant="k8s-without-keda"))
    for variant in (keda, plain):
        assert sorted(variant) == ["fanout-delivery", "fanout-ingest"], variant
        assert all(len(v) == 1 for v in variant.values()), variant  # never two on one target
        kind, ing = variant["fanout-ingest"][0]
        assert kind == "HorizontalPodAutoscaler" and [m["type"] for m in ing["spec"]["metrics"]] \
            == ["Resource"] and ing["spec"]["metrics"][0]["resource"]["name"] == "cpu", ing
    kind, so = keda["fanout-delivery"][0]
    assert kind == "ScaledObject", kind
    kind, hpa = plain["fanout-delivery"][0]
    assert kind == "HorizontalPodAutoscaler", kind
    spec = so["spec"]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"] <= partitions, spec
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"] <= partitions, hpa
    scale_down_is_slow(spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"], "keda")
    scale_down_is_slow(hpa["spec"]["behavior"], "hpa")
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == \
        hpa["spec"]["behavior"], "the two variants scale alike"

    trig = {t["type"]: t for t in spec["triggers"]}
    assert sorted(trig) == ["kafka", "prometheus"], trig
    k = trig["kafka"]["metadata"]
    assert k["allowIdleConsumers"] == "false", k  # the lag trigger stops at the partitions
    assert k["consumerGroup"] == delivery_arg("group-id", "fanout-delivery"), k
    assert k["topic"] == delivery_arg("users-topic", "fanout.users"), k
    assert k["offsetResetPolicy"] == delivery_arg("users-offset-reset", "earliest"), k
    config = by_kind(k8s_docs())["ConfigMap"]["fanout-config"]["data"]
    assert k["bootstrapServers"] == config["FANOUT_KAFKA"], (k, config)
    # Offsets committed often enough that the committed lag KEDA reads is
    # not mostly the commit interval.
    assert "auto.commit.interval.ms=1000" in delivery_arg("kafka-opts", ""), \
        delivery_arg("kafka-opts", "")
    p = trig["prometheus"]
    assert p.get("metricType", "AverageValue") == "AverageValue", p
    assert re.match(r"^sum\(fanout_delivery_connections\{", p["metadata"]["query"]), p
    assert p["metadata"]["ignoreNullValues"] == "false", p

    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]
               for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert sorted(targets) == ["fanout_delivery_connections", "fanout_delivery_consumer_lag"], \
        targets
    assert all(t["type"] == "AverageValue" for t in targets.values()), targets
    assert targets["fanout_delivery_connections"]["averageValue"] == p["metadata"]["threshold"]
    assert targets["fanout_delivery_consumer_lag"]["averageValue"] == k["lagThreshold"]
    # A pod at the connections target is at most half full (room for a
    # drained pod's clients).
    assert int(p["metadata"]["threshold"]) * 2 <= int(delivery_arg("max-connections", "100000"))

    # prometheus-adapter serves exactly the HPA's metrics, per pod.
    cm = yaml.safe_load(read("k8s", "prometheus-adapter-config.yaml"))
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    served = {}
    for r in rules:
        assert r["resources"]["overrides"]["pod"] == {"resource": "pod"}, r
        assert r["resources"]["overrides"]["namespace"] == {"resource": "namespace"}, r
        served[r["name"]["as"]] = r
        assert re.match(r["name"]["matches"], r["name"]["as"]), r
        assert r["seriesQuery"].startswith(r["name"]["as"] + "{"), r
    assert sorted(served) == sorted(targets), (served.keys(), targets.keys())


def test_k8s_pod_deletion_cost_sidecar():
    """The delivery pod's sidecar runs the shipped script against its own
    delivery container, with the pod's name and namespace; the API token is
    mounted into the sidecar alone; the service account may patch pods of
    its namespace and nothing else."""
    need_yaml()
    kinds = by_kind(k8s_docs())
    pod = kinds["Deployment"]["fanout-delivery"]["spec"]["template"]["spec"]
    delivery, side = pod["containers"]
    assert delivery["name"] == "delivery" and side["name"] == "pod-deletion-cost", pod
    assert side["command"][-1].endswith("/pod-deletion-cost.sh"), side["command"]
    mounts = {m["name"]: m["mountPath"] for m in side["volumeMounts"]}
    assert side["command"][-1] == mounts["pod-deletion-cost"] + "/pod-deletion-cost.sh"
    vols = {v["name"]: v for v in pod["volumes"]}
    kz = yaml.safe_load(read("k8s", "kustomization.yaml"))
    gens = {g["name"]: g for g in kz["configMapGenerator"]}
    assert gens[vols["pod-deletion-cost"]["configMap"]["name"]]["files"] == [
        "pod-deletion-cost.sh"]
    env = {e["name"]: e for e in side["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    port = delivery["ports"][0]["containerPort"]
    assert env["METRICS_URL"]["value"] == "http://127.0.0.1:%d/metrics" % port, env
    assert re.search(r"--listen=0\.0\.0\.0:%d" % port, " ".join(delivery["args"]))
    sa_path = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert pod["automountServiceAccountToken"] is False, pod
    assert mounts["api-token"] == sa_path, mounts
    assert not any(m["mountPath"].startswith("/var/run/secrets")
                   for m in delivery.get("volumeMounts", [])), delivery
    srcs = vols["api-token"]["projected"]["sources"]
    assert any("serviceAccountToken" in x for x in srcs), srcs
    sa = pod["serviceAccountName"]
    assert sa in kinds["ServiceAccount"], sa
    binds = [b for b in kinds["RoleBinding"].values()
             if any(x["kind"] == "ServiceAccount" and x["name"] == sa for x in b["subjects"])]
    assert len(binds) == 1 and binds[0]["roleRef"]["kind"] == "Role", binds
    role = kinds["Role"][binds[0]["roleRef"]["name"]]
    assert role["metadata"]["namespace"] == binds[0]["metadata"]["namespace"] == "fanout"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}], \
        role["rules"]
    assert not any(b["roleRef"]["kind"] == "ClusterRole" for b in kinds["RoleBinding"].values())
    assert "ClusterRoleBinding" not in kinds


def test_compose_file():
    need_yaml()
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


# ---- security properties of the examples ------------------------------------
# Variables that hold the query string (the client's token): never in a log.
QUERY_VARS = re.compile(r"\$\{?(request|request_uri|args|query_string|arg_token)(?![A-Za-z0-9_])")


def nginx_statements(text):
    """(directive words, body or None) per statement of an nginx config, with
    comments removed and quotes respected; body is the text inside {...}."""
    out, i, n = [], 0, len(text)
    words, cur = [], ""
    while i < n:
        c = text[i]
        if c == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if c in "'\"":
            j = text.index(c, i + 1)
            cur += text[i + 1:j]
            i = j + 1
            continue
        if c.isspace() or c in ";{}":
            if cur:
                words.append(cur)
                cur = ""
            if c == ";":
                out.append((words, None))
                words = []
            elif c == "{":
                depth, j, q = 1, i + 1, None
                while depth:
                    ch = text[j]
                    if q:
                        q = None if ch == q else q
                    elif ch in "'\"":
                        q = ch
                    elif ch == "#":
                        j = text.find("\n", j) - 1
                    elif ch == "{":
                        depth += 1
                    elif ch == "}":
                        depth -= 1
                    j += 1
                out.append((words, text[i + 1:j - 1]))
                words = []
                i = j
                continue
            i += 1
            continue
        cur += c
        i += 1
    return out


def nginx_walk(text, ctx=()):
    """Yields (context path, words, body) for every statement, recursively."""
    for words, body in nginx_statements(text):
        yield ctx, words, body
        if body is not None:
            yield from nginx_walk(body, ctx + (tuple(words),))


def test_log_formats_leave_out_query():
    """No log format of a shipped nginx or ingress config logs the query
    string, every access log uses such a format (or is off), and /ws writes
    only emerg to the error log (whose lines carry the request line)."""
    formats = 0
    for parts in NGINX_CONFIGS:
        text = read(*parts)
        name = "/".join(parts)
        fmts = {}
        ws_error_logs = []
        for ctx, words, body in nginx_walk(text):
            if words and words[0] == "log_format":
                fmts[words[1]] = " ".join(words[2:])
                m = QUERY_VARS.search(fmts[words[1]])
                assert not m, "%s: log_format %s logs %s" % (name, words[1], m.group(0))
                formats += 1
            if words and words[0] == "access_log" and words[1] != "off":
                assert len(words) > 2 and words[2] in fmts, (
                    "%s: access_log %s in the default format (it has $request)" % (name, words[1]))
            if words and words[0] == "error_log" and ctx and ctx[-1][:2] == ("location", "="):
                if ctx[-1][2] == "/ws":
                    ws_error_logs.append(words)
            if words and words[0] == "server" and body is not None and parts[0] == "nginx":
                # A conf.d file: the main config's access log (combined,
                # with $request) applies unless each server sets its own.
                assert any(w and w[0] == "access_log" for w, _ in nginx_statements(body)), (
                    "%s: a server without its own access_log" % name)
        assert ws_error_logs and all(w[-1] == "emerg" for w in ws_error_logs), (
            "%s: /ws needs error_log ... emerg (error lines carry ?token=): %s"
            % (name, ws_error_logs))
    assert formats >= 3, formats

    need_yaml()
    cm = yaml.safe_load(read("k8s", "ingress-nginx-config.yaml"))
    fmt = cm["data"]["log-format-upstream"]
    m = QUERY_VARS.search(fmt)
    assert not m, "ingress-nginx log-format-upstream logs %s" % m.group(0)
    assert "$uri" in fmt, fmt
    assert cm["data"]["error-log-level"] == "emerg", cm["data"]


def test_metrics_not_proxied():
    """/metrics (and anything under it) is reachable through no shipped
    proxy: no nginx location that proxies matches it, no ingress path
    covers it, no fanout port is published by compose or a k8s Service."""
    probe = "/metrics"
    for parts in NGINX_CONFIGS:
        for ctx, words, body in nginx_walk(read(*parts)):
            if not (words and words[0] == "location" and body is not None):
                continue
            proxies = any(w and w[0] == "proxy_pass" for w, _ in nginx_statements(body))
            mods, path = (words[1], words[2]) if len(words) == 3 else ("", words[1])
            if mods == "=":
                hit = path == probe
            elif mods.startswith("~"):
                hit = re.search(path, probe, re.I if mods == "~*" else 0) is not None
            else:
                hit = probe.startswith(path)
            assert not (proxies and hit), "%s: location %s proxies /metrics" % (
                "/".join(parts), " ".join(words))
    need_yaml()
    kinds = by_kind(k8s_docs(all_files=True))
    for name, ing in kinds["Ingress"].items():
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                hit = (p["path"] == probe if p["pathType"] == "Exact"
                       else probe.startswith(p["path"].rstrip("/") + "/") or p["path"] == "/")
                assert not hit, "ingress %s routes %s" % (name, p["path"])
    for name, svc in kinds["Service"].items():
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", "service %s is exposed" % name
    compose = yaml.safe_load(read("compose", "compose.yaml"))
    published = [n for n, s in compose["services"].items() if s.get("ports")]
    assert published == ["nginx"], published


def secret_value(text, key):
    m = re.search(r"^\s*%s\s*[=:]\s*\"?([^\"\n]*)" % key, text, re.M)
    return m.group(1) if m else None


def test_secrets_per_tier():
    """Delivery holds the JWT secret, ingest the API keys, never the other's;
    both the Redis password. In k8s (one Secret per tier), compose and the
    systemd env files."""
    need_yaml()
    kinds = by_kind(k8s_docs())
    want = {"fanout-delivery": ("fanout-delivery-secrets", "FANOUT_JWT_SECRET", "FANOUT_API_KEYS"),
            "fanout-ingest": ("fanout-ingest-secrets", "FANOUT_API_KEYS", "FANOUT_JWT_SECRET")}
    for dep, (secret, mine, theirs) in want.items():
        c = kinds["Deployment"][dep]["spec"]["template"]["spec"]["containers"][0]
        refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
        refs += [e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                 if "secretKeyRef" in e.get("valueFrom", {})]
        assert refs == [secret], "%s reads secrets %s" % (dep, refs)
        keys = set(kinds["Secret"][secret]["stringData"])
        assert {mine, "FANOUT_REDIS_PASSWORD"} <= keys and theirs not in keys, (secret, keys)
    assert "fanout-secrets" not in kinds["Secret"], "the shared Secret is back"

    compose = yaml.safe_load(read("compose", "compose.yaml"))["services"]
    for svc, (_, mine, theirs) in (("delivery-1", want["fanout-delivery"]),
                                   ("ingest-1", want["fanout-ingest"])):
        env = compose[svc]["environment"]
        assert mine in env and "FANOUT_REDIS_PASSWORD" in env and theirs not in env, (svc, env)
        # Secrets come from the operator's .env; compose refuses to start without.
        assert env[mine].startswith("${%s:?" % mine), env[mine]

    for f, mine, theirs in (("delivery.env.example", "FANOUT_JWT_SECRET", "FANOUT_API_KEYS"),
                            ("ingest.env.example", "FANOUT_API_KEYS", "FANOUT_JWT_SECRET")):
        text = read("systemd", f)
        assert secret_value(text, mine) and secret_value(text, "FANOUT_REDIS_PASSWORD"), f
        assert theirs not in text, "%s mentions %s" % (f, theirs)


def test_redis_requires_password():
    """The shipped Redis examples run with requirepass, taken from a secret
    and not on the command line; the stunnel example tunnels to a TLS port
    from loopback only and verifies the server."""
    need_yaml()
    redis = yaml.safe_load(read("compose", "compose.yaml"))["services"]["redis"]
    script = " ".join(redis["command"])
    assert "requirepass $$REDIS_PASSWORD" in script and "redis-server -" in script, script
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${FANOUT_REDIS_PASSWORD:?")
    assert "ports" not in redis
    dep = by_kind(k8s_docs(all_files=True))["Deployment"]["redis"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "requirepass $REDIS_PASSWORD" in " ".join(c["args"]), c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"], env
    conf = read("stunnel", "redis-client.conf")
    settings = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", conf, re.M))
    assert settings["client"] == "yes" and settings["accept"].startswith("127.0.0.1:"), settings
    assert settings["verifyChain"] == "yes" and settings.get("checkHost"), settings


def test_network_policies():
    """Only delivery and ingest (and the topics Job, for Kafka) reach Redis
    and Kafka; only ingress-nginx (and Prometheus) reach delivery and
    ingest; the namespace denies the rest; the labels match real pods."""
    need_yaml()
    kinds = by_kind(k8s_docs())
    pols = kinds["NetworkPolicy"]
    pod_names = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                 for d in list(kinds["Deployment"].values()) + list(kinds["Job"].values())}
    assert {"fanout-delivery", "fanout-ingest", "fanout-topics"} <= pod_names, pod_names
    deny = [p for p in pols.values() if p["spec"]["podSelector"] == {}]
    assert deny and all(not p["spec"].get("ingress") for p in deny), "no default deny"

    def rules_for(name):
        got = [p for p in pols.values()
               if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == name]
        assert len(got) == 1, "%s: %d policies" % (name, len(got))
        assert got[0]["spec"]["policyTypes"] == ["Ingress"], got[0]
        out = []
        for rule in got[0]["spec"]["ingress"]:
            srcs = set()
            for f in rule["from"]:
                assert "ipBlock" not in f, f
                sel = f["podSelector"]
                names = set(sel.get("matchLabels", {}).values())
                for e in sel.get("matchExpressions", []):
                    assert e["key"] == "app.kubernetes.io/name" and e["operator"] == "In", e
                    names |= set(e["values"])
                ns = f.get("namespaceSelector", {}).get("matchLabels", {})
                srcs |= {(ns.get("kubernetes.io/metadata.name", "fanout"), n) for n in names}
            out.append((srcs, sorted(p["port"] for p in rule.get("ports", []))))
        return out

    fanout = lambda *n: {("fanout", x) for x in n}
    assert rules_for("redis") == [(fanout("fanout-delivery", "fanout-ingest"), [6379]),
                                  (fanout("redis"), [])], rules_for("redis")
    assert rules_for("kafka") == [(fanout("fanout-delivery", "fanout-ingest", "fanout-topics"),
                                   [9092]), ({("keda", "keda-operator")}, [9092]),
                                  (fanout("kafka"), [])], rules_for("kafka")
    edge = {("ingress-nginx", "ingress-nginx"), ("monitoring", "prometheus")}
    assert rules_for("fanout-delivery") == [(edge, [8081])], rules_for("fanout-delivery")
    assert rules_for("fanout-ingest") == [(edge, [8080])], rules_for("fanout-ingest")
    # The ports are the ones the pods listen on.
    for dep, port in (("fanout-delivery", 8081), ("fanout-ingest", 8080)):
        c = kinds["Deployment"][dep]["spec"]["template"]["spec"]["containers"][0]
        assert [p["containerPort"] for p in c["ports"]] == [port], (dep, c["ports"])


def test_origins_and_jwt_placeholders():
    """Production examples set an Origin allow-list; every JWT secret in
    deploy/ examples is a marked placeholder of at least 32 bytes (delivery
    refuses shorter ones)."""
    need_yaml()
    c = by_kind(k8s_docs())["Deployment"]["fanout-delivery"]["spec"]["template"]["spec"][
        "containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("FANOUT_ORIGINS", "").startswith("https://"), env
    assert (secret_value(read("systemd", "delivery.env.example"), "FANOUT_ORIGINS") or
            "").startswith("https://")
    assert "FANOUT_ORIGINS=" in read("compose", "env.example")
    assert "FANOUT_ORIGINS" in yaml.safe_load(read("compose", "compose.yaml"))["services"][
        "delivery-1"]["environment"]
    values = []
    for parts in (("k8s", "config.yaml"), ("systemd", "delivery.env.example"),
                  ("compose", "env.example")):
        v = secret_value(read(*parts), "FANOUT_JWT_SECRET")
        assert v, parts
        values.append(v)
        assert len(v.encode()) >= 32 and "CHANGE-ME" in v, "%s: %r" % ("/".join(parts), v)
    # No other literal JWT secret anywhere in the examples (the local
    # scripts generate their own).
    for root, _dirs, files in os.walk(DEPLOY):
        if os.path.relpath(root, DEPLOY).startswith("local"):
            continue
        for f in files:
            with open(os.path.join(root, f), errors="replace") as fh:
                for m in re.finditer(r"(?<![{\w])FANOUT_JWT_SECRET\s*[=:]\s*\"?([^\s\"$]+)", fh.read()):
                    assert len(m.group(1)) >= 32, (f, m.group(1))


def redis_cmd(port, payload, timeout=5.0):
    """Sends raw RESP to port; returns what came back before the peer
    closed, a pause, or the timeout."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(timeout)) as s:
        s.sendall(payload)
        try:
            while not out.endswith(b"\r\n") or out.count(b"\r\n") < payload.count(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        except OSError:
            pass
    return out


def test_redis_stunnel_example():
    """deploy/stunnel/redis-client.conf, with only its addresses and CA path
    changed, carries plain Redis from loopback to a real redis-server's TLS
    port (with requirepass), and refuses a server its CA did not sign."""
    if shutil.which("stunnel") is None:
        raise AssertionError("stunnel missing: run deploy/install-deps.sh")
    tmp = tempfile.mkdtemp(prefix="fanout-stunnel-")
    procs = []
    try:
        def ossl(*args):
            subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60,
                           cwd=tmp)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ("ca", "other-ca"):
            ossl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=" + ca,
                 "-keyout", ca + ".key", "-out", ca + ".crt")
        ossl("req", *ec, "-subj", "/CN=localhost", "-keyout", "srv.key", "-out", "srv.csr")
        with open(os.path.join(tmp, "san.ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost\n")
        ossl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "srv.crt")
        with open(os.path.join(tmp, "redis.conf"), "w") as f:
            f.write("requirepass tunnel-test-password\n")
        tls_port = free_port()
        redis = Proc("redis-tls", ["redis-server", os.path.join(tmp, "redis.conf"), "--port", "0",
                                   "--tls-port", str(tls_port), "--bind", "127.0.0.1",
                                   "--tls-cert-file", os.path.join(tmp, "srv.crt"),
                                   "--tls-key-file", os.path.join(tmp, "srv.key"),
                                   "--tls-ca-cert-file", os.path.join(tmp, "ca.crt"),
                                   "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
                                   "--dir", tmp])
        procs.append(redis)
        redis.wait_line(r"Ready to accept connections")

        def tunnel(ca):
            port = free_port()
            text = read("stunnel", "redis-client.conf")
            text = re.sub(r"(?m)^accept = 127\.0\.0\.1:6379$", "accept = 127.0.0.1:%d" % port, text)
            text = re.sub(r"(?m)^connect = .*$", "connect = 127.0.0.1:%d" % tls_port, text)
            text = re.sub(r"(?m)^CAfile = .*$", "CAfile = " + os.path.join(tmp, ca), text)
            text = re.sub(r"(?m)^checkHost = .*$", "checkHost = localhost", text)
            assert text.count(str(port)) == 1 and text.count(str(tls_port)) == 1, text
            conf = os.path.join(tmp, "stunnel-%s.conf" % ca)
            with open(conf, "w") as f:
                f.write(text)
            pr = Proc("stunnel", ["stunnel", conf])
            procs.append(pr)
            wait_port("127.0.0.1", port, timeout=10)
            return port

        good = tunnel("ca.crt")
        assert redis_cmd(good, b"PING\r\n").startswith(b"-NOAUTH"), "no password needed?"
        got = redis_cmd(good, b"AUTH tunnel-test-password\r\nPING\r\n")
        assert got == b"+OK\r\n+PONG\r\n", got
        bad = tunnel("other-ca.crt")
        got = redis_cmd(bad, b"AUTH tunnel-test-password\r\nPING\r\n")
        assert got == b"", "a server signed by another CA was accepted: %r" % got
    finally:
        for pr in reversed(procs):
            pr.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_flags_exist():
    """Every --flag given to our binaries in deploy/ is one they know."""
    helps = {}
    for b in ("fanout-ingest", "fanout-delivery"):
        helps[b] = subprocess.run([find_binary(b), "--help"], capture_output=True, text=True,
                                  timeout=10).stdout
    files = [os.path.join(DEPLOY, "systemd", f) for f in os.listdir(os.path.join(DEPLOY, "systemd"))]
    for d in K8S_DIRS:
        files += [os.path.join(DEPLOY, d, f) for f in os.listdir(os.path.join(DEPLOY, d))
                  if os.path.isfile(os.path.join(DEPLOY, d, f))]
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
            parts = re.split(r"(?<![\w-])(%s)(?![\w-])" % names, chunk)
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
