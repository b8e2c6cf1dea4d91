#!/usr/bin/env bash
# rollgate demo: builds rollgate, starts a local fleet (a coordinator with its own etcd, and 8
# agents each running a small demo web service on its own port), installs v1, rolls out v2
# with live progress, then shows a bad v3 halted and rolled back. Cleans up after itself, also
# on Ctrl-C. Everything listens on 127.0.0.1 only, and every link is mTLS: the demo makes a
# fleet CA and a certificate per coordinator, host and operator with `rollgate certs`; the
# agents pin a release signing key and every release is signed with `rollgate release sign`.
#
#   deploy/demo.sh            # the whole story
#   DEMO_AGENTS=12 deploy/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/ensure-deps.sh
rollgate_ensure_deps

AGENTS=${DEMO_AGENTS:-8}
COORD_PORT=${DEMO_COORD_PORT:-17443}
ETCD_PORT=${DEMO_ETCD_PORT:-27390}
SVC_PORT_BASE=${DEMO_SVC_PORT_BASE:-18100}

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bold "building rollgate (cargo build --workspace --bins)"
cargo build --workspace --bins --quiet
BIN=$(pwd)/target/debug
export ROLLGATE_COORDINATOR="https://127.0.0.1:$COORD_PORT"
rollgate() { "$BIN/rollgate" "$@"; }

DEMO=$(mktemp -d /tmp/rollgate-demo.XXXXXX)
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "cleaning up: stopping agents, coordinator and its etcd; removing $DEMO"
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DEMO"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold "making a fleet CA and certificates (rollgate certs; every link below is mTLS)"
PKI=$DEMO/pki
rollgate certs init --fleet demo --dir "$PKI"
rollgate certs issue coordinator coord-1 --dir "$PKI" --ip 127.0.0.1 --dns localhost
rollgate certs issue operator demo-operator --dir "$PKI"
for i in $(seq 1 "$AGENTS"); do rollgate certs issue host "edge-$i" --dir "$PKI" >/dev/null; done
echo "and $AGENTS host certificates, edge-1 .. edge-$AGENTS (spiffe://demo/host/edge-N)"
rollgate release keygen --out "$PKI/release"
export ROLLGATE_CA=$PKI/ca.pem ROLLGATE_CERT=$PKI/operator-demo-operator.pem ROLLGATE_KEY=$PKI/operator-demo-operator.key

bold "starting the coordinator (it starts a local single-member etcd; logs in $DEMO/coordinator.log)"
cat > "$DEMO/coordinator.toml" <<TOML
listen = "127.0.0.1:$COORD_PORT"
state_dir = "$DEMO/coordinator"
[tls]
ca = "$PKI/ca.pem"
cert = "$PKI/coordinator-coord-1.pem"
key = "$PKI/coordinator-coord-1.key"
[etcd]
local_port = $ETCD_PORT
lease_ttl = "3s"
TOML
"$BIN/rollgate-coordinator" --config "$DEMO/coordinator.toml" >"$DEMO/coordinator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 200); do rollgate hosts >/dev/null 2>&1 && break; sleep 0.1; done
rollgate hosts >/dev/null || { echo "the coordinator did not come up:"; tail -20 "$DEMO/coordinator.log"; exit 1; }

bold "starting $AGENTS agents (each supervises one demo web service)"
for i in $(seq 1 "$AGENTS"); do
  port=$((SVC_PORT_BASE + i))
  site=$([ $((i % 2)) = 0 ] && echo ams || echo fra)
  mkdir -p "$DEMO/agent-$i"
  cat > "$DEMO/agent-$i/agent.toml" <<TOML
host_id = "edge-$i"
coordinator = "https://127.0.0.1:$COORD_PORT"
state_dir = "$DEMO/agent-$i/state"
[tls]
ca = "$PKI/ca.pem"
cert = "$PKI/host-edge-$i.pem"
key = "$PKI/host-edge-$i.key"
[signing]
required = true
keys = ["$PKI/release.pub"]
[labels]
site = "$site"
[[services]]
name = "demo"
backend = "process"
binary = "demo-svc"
args = ["--port", "$port"]
stop_timeout = "2s"
# The demo cleans up after itself: its services stop with their agents. (On a real host they
# keep running and the next agent adopts them; see the README.)
stop_with_agent = true
[[services.probes]]
kind = "http"
url = "http://127.0.0.1:$port/health"
interval = "200ms"
timeout = "1s"
TOML
  "$BIN/rollgate-agent" --config "$DEMO/agent-$i/agent.toml" >"$DEMO/agent-$i/agent.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 1 200); do
  n=$(rollgate --output json hosts 2>/dev/null | grep -o '"connected": *true' | wc -l || true)
  [ "$n" -ge "$AGENTS" ] && break
  sleep 0.1
done
rollgate hosts

bold "the web dashboard (rollgate dashboard, on this machine only; open the address to follow along)"
rollgate dashboard --listen "127.0.0.1:${DEMO_DASHBOARD_PORT:-17480}" >"$DEMO/dashboard.out" 2>"$DEMO/dashboard.log" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q '^dashboard: ' "$DEMO/dashboard.out" 2>/dev/null && break; sleep 0.1; done
grep '^dashboard: ' "$DEMO/dashboard.out" || { echo "the dashboard did not start:"; cat "$DEMO/dashboard.log"; }

# Releases: tiny wrappers around the demo service binary, each a distinct artifact.
release() { # version mode max_unavailable min_healthy_time healthy_deadline [extra strategy lines]
  local f="$DEMO/demo-svc-$1"
  printf '#!/bin/sh\nexec %s --version %s --mode %s --start-delay-ms 300 "$@"\n' "$BIN/rollgate-testsvc" "$1" "$2" >"$f"
  chmod +x "$f"
  local sig="signature_file = \"$f.sig\""
  if [ "${UNSIGNED:-}" = 1 ]; then sig=""; else
    rollgate release sign --key "$PKI/release.key" --fleet demo --service demo --version "$1" --expires 1d "$f" >/dev/null
  fi
  cat > "$DEMO/rollout-$1.toml" <<TOML
service = "demo"
[release]
version = "$1"
file = "$f"
$sig
[strategy]
max_unavailable = $3
min_healthy_time = "$4"
healthy_deadline = "$5"
${6:-}
TOML
}

bold "installing demo 1.0.0 on every host"
release 1.0.0 healthy 8 1s 30s
rollgate rollout start "$DEMO/rollout-1.0.0.toml" --watch

bold "rolling out 2.0.0: a canary first (baked 3s), then at most 3 hosts unavailable at once and 2 per site, each healthy for 2s before it counts"
release 2.0.0 healthy 3 2s 30s 'canary = 1
canary_gate = "3s"
group_by = "site"
max_unavailable_per_group = 2'
rollgate rollout plan "$DEMO/rollout-2.0.0.toml"
rollgate rollout start "$DEMO/rollout-2.0.0.toml" --watch

bold "rolling out a bad 3.0.0 (fails its health check): it must halt at the first failure and roll back"
release 3.0.0 unhealthy 2 1s 4s
if rollgate rollout start "$DEMO/rollout-3.0.0.toml" --watch; then
  echo "unexpected: the bad release was not halted"; exit 1
fi

bold "an unsigned 3.1.0: the agents pin the release key, so the first host refuses it before swapping anything"
UNSIGNED=1 release 3.1.0 healthy 2 1s 4s
if rollgate rollout start "$DEMO/rollout-3.1.0.toml" --watch; then
  echo "unexpected: the unsigned release was installed"; exit 1
fi

bold "every host still serves 2.0.0, healthy"
rollgate hosts
health() { # port: asks the service itself, not the coordinator
  { exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && tail -n1 <&3; exec 3>&-; } 2>/dev/null || echo unreachable
}
for i in $(seq 1 "$AGENTS"); do
  printf 'edge-%s (port %s): %s\n' "$i" "$((SVC_PORT_BASE + i))" "$(health $((SVC_PORT_BASE + i)))"
done
bold "demo done"
