#!/bin/sh
# Keeps this pod's controller.kubernetes.io/pod-deletion-cost annotation equal
# to the number of WebSocket connections it holds, so that a scale-in (HPA,
# KEDA, a rollout) removes the emptiest delivery pod first and disconnects the
# fewest clients. Runs as a sidecar of fanout-delivery (delivery.yaml), shipped
# by kustomize's configMapGenerator; POSIX sh + curl + awk (the curl image's
# busybox, or Debian's dash).
#
# Every INTERVAL seconds: read fanout_delivery_connections from delivery's
# /metrics; when it differs from the last value written, PATCH the pod
# (merge patch of that one annotation) through the API server with the
# service account token. So the API server sees at most one write per pod per
# INTERVAL, and none while the count is steady. A failed read or write is
# logged and retried on the next round (the value is not taken as written).
#
# Environment (the Deployment sets the first two from the downward API):
#   POD_NAME        this pod's name (required)
#   POD_NAMESPACE   its namespace (default: the service account's namespace file)
#   METRICS_URL     default http://127.0.0.1:8081/metrics
#   METRIC          default fanout_delivery_connections
#   INTERVAL        seconds between reads, default 15
#   SA_DIR          token, ca.crt (and namespace), default
#                   /var/run/secrets/kubernetes.io/serviceaccount
#   API_SERVER      default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
set -u

METRICS_URL=${METRICS_URL:-http://127.0.0.1:8081/metrics}
METRIC=${METRIC:-fanout_delivery_connections}
INTERVAL=${INTERVAL:-15}
SA_DIR=${SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
ANNOTATION=controller.kubernetes.io/pod-deletion-cost

log() { echo "pod-deletion-cost: $*" >&2; }

if [ -z "${POD_NAME:-}" ]; then
  log "POD_NAME is not set (give it metadata.name through the downward API)"
  exit 2
fi
if [ -z "${POD_NAMESPACE:-}" ]; then
  POD_NAMESPACE=$(cat "$SA_DIR/namespace" 2>/dev/null) || POD_NAMESPACE=
  if [ -z "$POD_NAMESPACE" ]; then
    log "POD_NAMESPACE is not set and $SA_DIR/namespace is unreadable"
    exit 2
  fi
fi
if [ -z "${API_SERVER:-}" ]; then
  host=${KUBERNETES_SERVICE_HOST:-}
  if [ -z "$host" ]; then
    log "neither API_SERVER nor KUBERNETES_SERVICE_HOST is set"
    exit 2
  fi
  case $host in *:*) host="[$host]" ;; esac # an IPv6 address
  API_SERVER="https://$host:${KUBERNETES_SERVICE_PORT:-443}"
fi
URL="$API_SERVER/api/v1/namespaces/$POD_NAMESPACE/pods/$POD_NAME"

# The pod is going away (scale-in, rollout): stop at once, whatever the
# round is doing. The sleep runs in the background so the trap fires now.
trap 'kill $! 2>/dev/null; exit 0' TERM INT

last= # the value the API server holds (empty: not written yet)
failing=
while :; do
  # The exact sample name, not fanout_delivery_connections_total or a
  # labelled series. Gauges print as integers (%d would also read 1e+05);
  # the annotation is an int32.
  n=$(curl -fsS --max-time 5 "$METRICS_URL" 2>/dev/null |
    awk -v m="$METRIC" '$1 == m { printf "%d\n", $2; found = 1; exit } END { if (!found) exit 1 }')
  if [ -z "$n" ]; then
    log "no $METRIC in $METRICS_URL (delivery not up yet?)"
  else
    [ "$n" -gt 2147483647 ] && n=2147483647
    if [ "$n" != "$last" ]; then
      # Re-read every time: the kubelet rotates projected tokens.
      token=$(cat "$SA_DIR/token" 2>/dev/null) || token=
      body="{\"metadata\":{\"annotations\":{\"$ANNOTATION\":\"$n\"}}}"
      # "200", or the HTTP status / "000" and curl's error on one line.
      code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code} %{errormsg}' -X PATCH \
        --cacert "$SA_DIR/ca.crt" \
        -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/merge-patch+json' \
        -H 'Accept: application/json' \
        --data "$body" "$URL")
      if [ "$code" = "200 " ]; then
        if [ -z "$last" ] || [ -n "$failing" ]; then
          log "$ANNOTATION=$n (written on every change, read every ${INTERVAL}s)"
        fi
        last=$n
        failing=
      else
        log "PATCH $URL failed (${code% }); retrying in ${INTERVAL}s"
        failing=1
      fi
    fi
  fi
  sleep "$INTERVAL" &
  wait $!
done
