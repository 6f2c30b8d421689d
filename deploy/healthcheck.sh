#!/bin/bash
# Container health check for phb-ledger: GET /readyz (or the path given as
# $1) on the metrics/health HTTP port and succeed only on "200". It speaks
# HTTP through bash's /dev/tcp, so the image needs no curl or wget (fewer
# packages in the runtime image, fewer things to patch).
#
# /readyz is 200 while the gRPC service is SERVING and 503 once storage
# refuses writes (docs/operations.md, "When writes fail"), so Docker marks
# such a container unhealthy.
#
# The port follows PHB_LEDGER_METRICS_LISTEN, the variable the server reads,
# so moving the port moves the check with it; PHB_HEALTHCHECK_PORT overrides.
set -u
path=${1:-/readyz}
listen=${PHB_LEDGER_METRICS_LISTEN:-127.0.0.1:9464}
port=${PHB_HEALTHCHECK_PORT:-${listen##*:}}
host=${PHB_HEALTHCHECK_HOST:-127.0.0.1}

# Docker's --timeout ends a check that hangs; the read timeout is there for
# a run outside Docker.
# A peer that closes early makes printf fail rather than kill the check.
trap '' PIPE
{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || { echo "no answer on $host:$port" >&2; exit 1; }
printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$path" "$host" "$port" >&3 || exit 1
IFS=' ' read -r -t 5 version status _ <&3 || { echo "no status line from $host:$port$path" >&2; exit 1; }
# Read the rest (the server closes after it: Connection: close) so the server
# sees an orderly close rather than a reset.
while IFS= read -r -t 5 _ <&3; do :; done
exec 3<&-
if [[ $version == HTTP/1.* && $status == 200 ]]; then
  exit 0
fi
echo "$path on $host:$port answered ${status:-nothing}" >&2
exit 1
