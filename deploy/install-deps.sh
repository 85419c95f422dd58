#!/usr/bin/env bash
# Installs the Debian 12 packages that building, running and testing fanout need.
# Idempotent: packages already present are skipped, so it is cheap on every run.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config ninja-build
  librdkafka-dev libhiredis-dev libuv1-dev libwslay-dev libmsgpack-dev libcmocka-dev liburing-dev
  libjansson-dev libhttp-parser-dev libxxhash-dev libssl-dev
  redis-server kcat nginx-light wrk curl procps stunnel4
  tcpdump  # tests/bench/ingest/bench_latency.py --pcap: per-message times from packets
  clang libclang-rt-14-dev llvm clang-format
  python3 python3-websockets python3-yaml
  # tests: independent encoders for the contract checks (XXH32, msgpack), a
  # Kafka client to read committed offsets, systemd-analyze for the units
  python3-xxhash python3-msgpack python3-confluent-kafka systemd
  openjdk-17-jdk-headless maven  # javac: deploy/local/apache-kafka compiles its admin helper
  # the container image and compose stack (deploy/image/build, deploy/compose/podman):
  # podman with runc, podman-compose, debootstrap for the base image, the CNI
  # bridge and its DNS plugin (compose's service names); a venv for
  # deploy/k8s/validate's schema validator (PyPI)
  podman runc podman-compose debootstrap containernetworking-plugins
  golang-github-containernetworking-plugin-dnsname python3-venv
  # a real browser for tests/browser (driven by playwright-core from npm,
  # tests/browser/package-lock.json; it downloads no browser of its own)
  chromium
)

missing=()
# The JS client's tests need node (18+, its test runner) and npm; a node from
# elsewhere (e.g. NodeSource, which bundles npm and conflicts with Debian's
# npm package) is used as it is.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
