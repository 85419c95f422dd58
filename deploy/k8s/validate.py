"""deploy/k8s/validate's checker (run by that script with its venv's python,
which has kubernetes-validate and jsonschema). Every object of every file,
and of every kustomize build, must validate:
- Kubernetes kinds against the API's JSON schemas (kubernetes-validate,
  strict: an unknown field fails) for each version asked;
- kinds that kubernetes-validate does not know (KEDA's ScaledObject) against
  the schema in schemas/ for that kind; a kind with neither fails (never a
  silent pass);
- prometheus-adapter's config (the ConfigMap's config.yaml) against
  schemas/prometheus-adapter-config.json.
Prints one line per error and a summary; exit 0 (all valid), 1 (invalid),
2 (cannot check: a tool missing)."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.dirname(HERE)
# The kustomizations a user applies (kubectl apply -k).
BUILDS = [os.path.join(DEPLOY, "k8s"), os.path.join(DEPLOY, "k8s-without-keda")]
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json"}
ADAPTER_SCHEMA = "prometheus-adapter-config.json"


def load_schema(name):
    with open(os.path.join(HERE, "schemas", name)) as f:
        return json.load(f)


def default_files():
    out = []
    for d in BUILDS:
        out += sorted(os.path.join(d, n) for n in os.listdir(d)
                      if n.endswith(".yaml") and n != "kustomization.yaml")
    return out


def json_errors(schema, doc):
    v = jsonschema.Draft202012Validator(schema)
    return ["%s: %s" % (".".join(str(p) for p in e.absolute_path) or "(top)", e.message)
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def check_doc(doc, versions):
    """Error strings for one object (empty: valid)."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (no apiVersion/kind)"]
    errs = []
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        errs += json_errors(load_schema(CRD_SCHEMAS[key]), doc)
    else:
        for v in versions:
            try:
                kv.validate(doc, v, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errs.append("Kubernetes %s: %s: %s" % (e.version, path, e.message))
            except kv.SchemaNotFoundError as e:
                errs.append("no schema: %s (add one under deploy/k8s/schemas/)" % e.message)
    name = doc.get("metadata", {}).get("name", "")
    if doc["kind"] == "ConfigMap" and name == "prometheus-adapter":
        cfg = doc.get("data", {}).get("config.yaml")
        if cfg is None:
            errs.append("prometheus-adapter ConfigMap without data.config.yaml")
        else:
            errs += ["config.yaml: " + e
                     for e in json_errors(load_schema(ADAPTER_SCHEMA), yaml.safe_load(cfg))]
    return errs


def check_docs(where, docs, versions):
    bad = 0
    for doc in docs:
        label = "%s/%s" % (doc.get("kind", "?"), doc.get("metadata", {}).get("name", "?")) \
            if isinstance(doc, dict) else "?"
        for e in check_doc(doc, versions):
            print("ERROR %s %s: %s" % (where, label, e))
            bad += 1
    return bad


def kustomize_cmd():
    """$FANOUT_K8S_KUSTOMIZE (a command, "none": as if missing), else kubectl
    kustomize, else a standalone kustomize; None if neither."""
    env = os.environ.get("FANOUT_K8S_KUSTOMIZE")
    if env:
        return None if env == "none" else env.split()
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", default="1.29.0 1.33.0")
    ap.add_argument("--no-kustomize", action="store_true",
                    help="check the files only, not the kustomize builds")
    ap.add_argument("files", nargs="*")
    a = ap.parse_args()
    versions = a.versions.split()
    files = a.files or default_files()
    bad = 0
    for path in files:
        with open(path) as f:
            try:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                print("ERROR %s: not YAML: %s" % (path, e))
                bad += 1
                continue
        if not docs:
            print("ERROR %s: no object" % path)
            bad += 1
        where = os.path.abspath(path)
        if where.startswith(DEPLOY + os.sep):
            where = os.path.relpath(where, DEPLOY)
        bad += check_docs(where, docs, versions)
    built = []
    # Explicit files: check those alone (the kustomizations are the
    # repository's, not theirs).
    if not a.files and not a.no_kustomize:
        cmd = kustomize_cmd()
        if cmd is None:
            print("deploy/k8s/validate: neither kubectl nor kustomize is installed, so the "
                  "kustomize builds were NOT checked. Install kubectl (it carries kustomize), "
                  "or pass --no-kustomize to check the files alone.", file=sys.stderr)
            return 2
        for d in BUILDS:
            r = subprocess.run(cmd + [d], capture_output=True, text=True, timeout=120)
            rel = os.path.relpath(d, DEPLOY)
            if r.returncode != 0:
                print("ERROR kustomize %s: %s" % (rel, r.stderr.strip()))
                bad += 1
                continue
            docs = [x for x in yaml.safe_load_all(r.stdout) if x is not None]
            bad += check_docs("kustomize " + rel, docs, versions)
            built.append("%s (%d objects)" % (rel, len(docs)))
    if bad:
        print("deploy/k8s/validate: %d error(s)" % bad)
        return 1
    print("deploy/k8s/validate: %d files valid for Kubernetes %s%s" % (
        len(files), " ".join(versions),
        "; kustomize builds valid: " + ", ".join(built) if built else
        "; kustomize builds not checked (--no-kustomize or files given)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
