#!/usr/bin/env bash
# make demo: a registry and two peers on loopback, a verified fetch, the history.
# Everything lives in a temporary directory that is removed at the end.
set -euo pipefail
BIN="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
DEMO="$(mktemp -d /tmp/p2pd-demo.XXXXXX)"
pids=()

stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$DEMO"
}
trap stop_all EXIT

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The arguments as one line a shell reads back as they are (copy-pasteable):
# plain words bare, anything else in single quotes.
shell_quoted() {
    local words=() arg LC_ALL=C  # C: letter ranges mean ASCII letters only
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            words+=("$arg")
        else
            words+=("'${arg//\'/\'\\\'\'}'")
        fi
    done
    printf '%s\n' "${words[*]}"
}
run() { printf '$ %s\n' "$(shell_quoted "$@")"; "$@"; }

wait_for() {  # wait_for DESCRIPTION COMMAND...: up to 15 s
    for _ in $(seq 150); do "${@:2}" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "demo: timed out waiting for $1" >&2; exit 1
}

secret="$(openssl rand -hex 16 2>/dev/null || "$BIN/python" -c 'import secrets; print(secrets.token_hex(16))')"
reg_port="$(free_port)"

say "A registry on 127.0.0.1:$reg_port (logs in $DEMO/*.log)"
REGISTRYD_SECRET="$secret" REGISTRYD_LISTEN="127.0.0.1:$reg_port" REGISTRYD_PEER_TTL=6 \
    "$BIN/registryd" --config /dev/null 2>"$DEMO/registryd.log" &
pids+=($!)
wait_for "the registry" "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1])' "http://127.0.0.1:$reg_port/healthz"

start_peer() {  # start_peer NAME
    local name=$1 port
    port="$(free_port)"
    mkdir -p "$DEMO/$name"/{share,downloads,state}
    cat >"$DEMO/$name/p2pd.toml" <<EOF
name = "$name"
share_dir = "$DEMO/$name/share"
download_dir = "$DEMO/$name/downloads"
state_dir = "$DEMO/$name/state"
control_socket = "$DEMO/$name/control.sock"
listen = "127.0.0.1:$port"
registries = ["http://127.0.0.1:$reg_port"]
secret = "$secret"
heartbeat_interval = 1
EOF
    "$BIN/p2pd" --config "$DEMO/$name/p2pd.toml" 2>"$DEMO/$name.log" &
    pids+=($!)
}

say "Two peers, alice and bob; bob shares a few files"
mkdir -p "$DEMO/bob/share/photos"
echo "Hello from bob!" >"$DEMO/bob/share/hello.txt"
head -c 3000000 /dev/urandom >"$DEMO/bob/share/photos/holiday.raw"
printf 'Grüße aus dem Demo ☃\n' >"$DEMO/bob/share/notes – Grüße.txt"
start_peer alice
start_peer bob
alice() { "$BIN/p2pctl" --socket "$DEMO/alice/control.sock" "$@"; }
echo "(below, 'alice' stands for: $(shell_quoted "$BIN/p2pctl" --socket "$DEMO/alice/control.sock"))"
wait_for "alice to see bob" sh -c "'$BIN/p2pctl' --socket '$DEMO/alice/control.sock' --json peers | grep -q '\"bob\"'"
wait_for "bob to see alice" sh -c "'$BIN/p2pctl' --socket '$DEMO/bob/control.sock' --json peers | grep -q '\"alice\"'"
# A file is offered once it has been unchanged for stable_after (2 s by
# default), so that nobody gets a file that is still being written.
wait_for "bob to offer its new files" sh -c "'$BIN/p2pctl' --socket '$DEMO/bob/control.sock' --json status | grep -q '\"shared_files\": 3'"

say "Who is online, seen from alice"
run alice peers

say "What bob shares"
run alice ls bob

say "alice searches every member's files (here, bob's)"
run alice search holiday

say "alice fetches a file from bob over mutual TLS; its sha256 is verified"
run alice fetch bob photos/holiday.raw
echo "sha256 at bob:   $(sha256sum "$DEMO/bob/share/photos/holiday.raw" | cut -d' ' -f1)"
echo "sha256 at alice: $(sha256sum "$DEMO/alice/downloads/photos/holiday.raw" | cut -d' ' -f1)"
run alice fetch bob "notes – Grüße.txt"

say "alice's history"
run alice history

say "Stopping everything"
trap - EXIT
stop_all
echo "Done. The demo's files are removed; run it again with: make demo"
