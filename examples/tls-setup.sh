# Sourced by examples/*/run.sh: a throwaway certificate authority and a
# phb-ledger server started from a configuration file, speaking mutual TLS
# (docs/operations.md "Transport security", docs/configuration.md).
#
#   make_certificates DIR ORG...  DIR/ca.pem, DIR/server.{pem,key} for
#                                 localhost and 127.0.0.1, and
#                                 DIR/client-ORG.{pem,key} per organisation
#                                 (subject CN = the organisation id)
#   start_server BIN WORK          writes WORK/phb-ledger.toml (data in
#                                 WORK/data, certificates in WORK/tls), starts
#                                 `BIN serve --config` and sets SERVER_PID and
#                                 PORT; its output is WORK/server.{out,err}
#
# In production the operator's CA issues these certificates, one per partner
# organisation; nothing here is meant to outlive the run.

if ! command -v openssl >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq openssl) >/dev/null
  else
    echo "examples: openssl is needed to make the test certificates" >&2
    exit 1
  fi
fi

# openssl's chatter goes to DIR/openssl.log, shown only if a step fails.
_openssl() {
  openssl "$@" 2>>"$_tls_log" || { cat "$_tls_log" >&2; return 1; }
}

# A P-256 key and a certificate for it signed by the CA: DIR/NAME.{key,pem}
# with subject CN, and EXT (subject alternative names for the server,
# clientAuth for a client).
_issue() { # DIR NAME CN EXT
  local dir="$1" name="$2" cn="$3" ext="$4"
  _openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$cn"
  printf '%b' "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n$ext\n" >"$dir/$name.ext"
  _openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAserial "$dir/ca.srl" -CAcreateserial -days 2 -sha256 \
    -extfile "$dir/$name.ext" -out "$dir/$name.pem"
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

make_certificates() {
  local dir="$1" org
  shift
  mkdir -p "$dir"
  _tls_log="$dir/openssl.log"
  (umask 077
   _openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -sha256 \
     -keyout "$dir/ca.key" -out "$dir/ca.pem" -subj "/CN=phb-ledger example CA"
   _issue "$dir" server localhost \
     "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1"
   # With tls.bind_organisation the subject's common name is the
   # organisation id: `root` for the root key's tooling.
   for org in "$@"; do
     _issue "$dir" "client-$org" "$org" "extendedKeyUsage = clientAuth"
   done)
}

start_server() {
  local bin="$1" work="$2" addr=""
  # Paths in the file are relative to its directory.
  cat >"$work/phb-ledger.toml" <<'EOF'
[server]
listen = "127.0.0.1:0"        # a free port, printed on stdout

[storage]
data = "data"                 # the first start generates data/root.key

[metrics]
listen = ""                   # off: no clash between concurrent runs

[tls]
cert = "tls/server.pem"
key = "tls/server.key"
client_ca = "tls/ca.pem"      # mutual TLS: partners present a certificate
bind_organisation = true      # ... whose CN is the organisation they act as

[auth]
require_read_nonce = true     # every read signature is single-use
EOF
  "$bin" serve --config "$work/phb-ledger.toml" >"$work/server.out" 2>"$work/server.err" &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    addr="$(sed -n 's/^phb-ledger .* listening on \(.*\)$/\1/p' "$work/server.out" | head -n1)"
    [ -n "$addr" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    echo "examples: the server did not report its address" >&2
    cat "$work/server.out" "$work/server.err" >&2
    exit 1
  fi
  PORT="${addr##*:}"
}
