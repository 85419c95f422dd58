#!/usr/bin/python3
"""deploy/k8s and deploy/k8s-without-keda validated offline (deploy/k8s/validate):
every file and both kustomize builds, Kubernetes kinds against the API's
JSON schemas (kubernetes-validate from PyPI, pinned with hashes in
deploy/k8s/validate-requirements.txt, which ships the schemas of every
version; installed once into a cached venv), KEDA's ScaledObject and
prometheus-adapter's config against the schemas in deploy/k8s/schemas/.
Strict: an unknown field fails, a kind without a schema fails. The
validator is shown to catch mistakes on broken copies, and to refuse to
pass when it cannot build the kustomizations. Without kubectl the builds
are not checked and the test reports SKIP (exit 77), not a pass."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import fanout_test as ft

VALIDATE = os.path.join(ft.SOURCE_DIR, "deploy", "k8s", "validate")
K8S = os.path.join(ft.SOURCE_DIR, "deploy", "k8s")
DIRS = [K8S, os.path.join(ft.SOURCE_DIR, "deploy", "k8s-without-keda")]


def run(*args, env=None):
    return subprocess.run([VALIDATE, *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **(env or {})})


def test_manifests_valid():
    kubectl = shutil.which("kubectl") is not None
    r = run() if kubectl else run("--no-kustomize")
    assert r.returncode == 0, "deploy/k8s/validate failed:\n%s%s" % (r.stdout, r.stderr[-4000:])
    ft.log(r.stdout.strip())
    n = int(r.stdout.split("deploy/k8s/validate: ")[1].split()[0])
    expected = [f for d in DIRS for f in os.listdir(d)
                if f.endswith(".yaml") and f != "kustomization.yaml"]
    assert "keda.yaml" in expected and "delivery-hpa.yaml" in expected, expected
    assert n == len(expected), (n, expected)
    if not kubectl:
        raise ft.Skip("kubectl not installed: the files are valid, the kustomize builds "
                      "were not checked")
    assert "kustomize builds valid: k8s (" in r.stdout, r.stdout
    assert "k8s-without-keda (" in r.stdout, r.stdout


def test_missing_kustomize_is_not_a_pass():
    r = run(env={"FANOUT_K8S_KUSTOMIZE": "none"})
    assert r.returncode == 2 and "NOT checked" in r.stderr, (r.returncode, r.stdout, r.stderr)


def test_validator_catches_mistakes():
    with open(os.path.join(K8S, "delivery.yaml")) as f:
        text = f.read()
    bad = {
        # a misspelt field (strict mode)
        "typo.yaml": text.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:", 1),
        # a wrong type
        "type.yaml": re.sub(r"terminationGracePeriodSeconds: \d+",
                            "terminationGracePeriodSeconds: thirty", text, count=1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, body in bad.items():
            assert body != text, name
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(body)
            r = run(path)
            assert r.returncode != 0, "%s passed:\n%s%s" % (name, r.stdout, r.stderr)
            assert "terminationGracePeriod" in r.stdout + r.stderr, (name, r.stdout, r.stderr)


def test_validator_catches_keda_and_adapter_mistakes():
    """kubernetes-validate only warns about a kind it does not know; ours
    checks the ScaledObject against schemas/keda-scaledobject-v1alpha1.json
    (trigger metadata included: KEDA ignores an unknown key), the adapter's
    rules against schemas/prometheus-adapter-config.json, and fails a kind
    that has no schema at all."""
    with open(os.path.join(K8S, "keda.yaml")) as f:
        keda = f.read()
    with open(os.path.join(K8S, "prometheus-adapter-config.yaml")) as f:
        adapter = f.read()
    bad = {
        "lag.yaml": (keda.replace("lagThreshold:", "lagTreshold:", 1), "lagTreshold"),
        "bool.yaml": (keda.replace('allowIdleConsumers: "false"', "allowIdleConsumers: false", 1),
                      "allowIdleConsumers"),
        "spec.yaml": (keda.replace("maxReplicaCount:", "maxReplicas:", 1), "maxReplicas"),
        "adapter.yaml": (adapter.replace("metricsQuery:", "metricQuery:", 1), "metricQuery"),
        "kind.yaml": ("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
                      "no schema"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (body, needle) in bad.items():
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(body)
            r = run(path)
            assert r.returncode == 1, "%s: %d\n%s%s" % (name, r.returncode, r.stdout, r.stderr)
            assert needle in r.stdout, (name, r.stdout, r.stderr)
        # The shipped files themselves pass alone.
        r = run(os.path.join(K8S, "keda.yaml"), os.path.join(K8S, "prometheus-adapter-config.yaml"))
        assert r.returncode == 0, r.stdout + r.stderr


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)
