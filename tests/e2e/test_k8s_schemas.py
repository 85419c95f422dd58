#!/usr/bin/python3
"""deploy/k8s validated offline against the Kubernetes API's JSON schemas
(deploy/k8s/validate: kubernetes-validate from PyPI, pinned with hashes in
deploy/k8s/validate-requirements.txt, which ships the schemas of every
version; installed once into a cached venv). Strict: an unknown field fails.
The validator is shown to catch mistakes on broken copies."""

import os
import subprocess
import sys
import tempfile

import fanout_test as ft

VALIDATE = os.path.join(ft.SOURCE_DIR, "deploy", "k8s", "validate")
K8S = os.path.join(ft.SOURCE_DIR, "deploy", "k8s")


def run(*files):
    return subprocess.run([VALIDATE, *files], capture_output=True, text=True, timeout=240)


def test_manifests_valid():
    r = run()
    assert r.returncode == 0, "deploy/k8s/validate failed:\n%s%s" % (r.stdout, r.stderr[-4000:])
    ft.log(r.stdout.strip())
    n = int(r.stdout.split("deploy/k8s/validate: ")[1].split()[0])
    expected = [f for f in os.listdir(K8S) if f.endswith(".yaml") and f != "kustomization.yaml"]
    assert n == len(expected), (n, expected)


def test_validator_catches_mistakes():
    with open(os.path.join(K8S, "delivery.yaml")) as f:
        text = f.read()
    bad = {
        # a misspelt field (strict mode)
        "typo.yaml": text.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:", 1),
        # a wrong type
        "type.yaml": text.replace("terminationGracePeriodSeconds: 30",
                                  "terminationGracePeriodSeconds: thirty", 1),
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


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)
