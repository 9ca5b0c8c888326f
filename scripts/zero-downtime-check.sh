#!/usr/bin/env bash
# Zero-downtime check: binary upgrades and reloads under load, on
# loopback, must fail no request.
#
#   scripts/zero-downtime-check.sh [--quick] [--rounds N]
#
# Starts a master with two built-in workers on 127.0.0.1 (a free port
# chosen by the kernel: --bind 127.0.0.1:0, read back from the master's
# "listening on" log line), a pidfile in a temporary directory and
# --auto-retire off, so that scripts/upgrade.sh does the TERM itself.
# A python3 client (scripts/zero_downtime_client.py: a few threads, a
# new connection per request) drives load while the script does N
# rounds of one upgrade (scripts/upgrade.sh) and one reload
# (scripts/reload.sh --url, which waits for the "generation" in
# responses to increase). Every failed connect, reset, timeout, non-200
# or unreadable body counts as a failure. Then it
# checks that the last response came from the newest master and its
# newest generation, stops the master with TERM and checks that no
# process of its session is left.
#
# Options:
#   --quick      N=2 (default N=3)
#   --rounds N   N rounds
#   -h, --help   this text
#
# Environment:
#   UPGRADER_BIN=PATH   the upgrader binary; default
#                       ${CARGO_TARGET_DIR:-target}/release/upgrader,
#                       built with cargo if missing
#
# Prints "requests: X ok, Y failed" and exits 0 only if nothing failed.
# Every wait is bounded; the whole run takes a few seconds. The master
# runs in its own session (setsid); on exit, whatever is left of it gets
# TERM to the masters' process group, then KILL by pid.
set -euo pipefail

me=zero-downtime-check
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=3

usage() {
    echo "usage: scripts/zero-downtime-check.sh [--quick] [--rounds N]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) rounds=2 ;;
        --rounds)
            [ $# -ge 2 ] || usage
            rounds="$2"
            shift
            ;;
        -h | --help)
            sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) usage ;;
    esac
    shift
done
if ! [[ "$rounds" =~ ^[1-9][0-9]?$ ]]; then
    usage
fi

say() { echo "$me: $*"; }
fail() {
    echo "$me: FAILED: $*" >&2
    exit 1
}

command -v python3 >/dev/null || fail "python3 is needed for the load client"
command -v curl >/dev/null || fail "curl is needed by scripts/reload.sh"

bin="${UPGRADER_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/upgrader}"
if [ ! -x "$bin" ]; then
    [ -z "${UPGRADER_BIN:-}" ] || fail "UPGRADER_BIN=$bin is not executable"
    say "building $bin"
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    [ -x "$bin" ] || fail "cargo built no $bin"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/zero-downtime-check.XXXXXX")"
pidfile="$tmp/upgrader.pid"
log="$tmp/master.log"
stop_file="$tmp/stop"
result="$tmp/client.out"
sid=""
client=""

# Every process of the master's session that is not a zombie: masters,
# workers (each in its own process group, but the same session).
session_pids() {
    ps -e -o pid=,sid=,stat= 2>/dev/null |
        while read -r pid s stat; do
            if [ "$s" = "$sid" ] && [ "${stat#Z}" = "$stat" ]; then
                echo "$pid"
            fi
        done
}

# Waits up to $1 seconds for the session to be empty.
session_gone() {
    local i
    for ((i = 0; i < $1 * 10; i++)); do
        [ -n "$(session_pids)" ] || return 0
        sleep 0.1
    done
    return 1
}

cleanup() {
    local status=$? p
    trap - EXIT INT TERM
    if [ -n "$client" ]; then
        kill "$client" 2>/dev/null || true
    fi
    if [ -n "$sid" ] && [ -n "$(session_pids)" ]; then
        # Masters share the session leader's process group.
        kill -TERM -- "-$sid" 2>/dev/null || true
        if ! session_gone 5; then
            for p in $(session_pids); do
                kill -KILL "$p" 2>/dev/null || true
            done
        fi
    fi
    if [ "$status" -ne 0 ] && [ -s "$log" ]; then
        echo "--- last lines of the master's log ($log):" >&2
        tail -n 30 "$log" >&2
    fi
    rm -rf -- "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The master. In a script without job control a background job is no
# process group leader, so setsid(1) makes the session without forking:
# $! is the master's pid and the session id.
: >"$log"
setsid "$bin" --bind 127.0.0.1:0 --workers 2 --pid "$pidfile" \
    --auto-retire off --graceful-timeout 5 --boot-timeout 10 \
    </dev/null 2>"$log" &
sid=$!

port=""
for ((i = 0; i < 100; i++)); do
    if [ -z "$port" ]; then
        port="$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$log" |
            head -n 1)"
    fi
    if [ -n "$port" ] && [ -s "$pidfile" ]; then
        break
    fi
    kill -0 "$sid" 2>/dev/null || fail "the master exited at start"
    sleep 0.1
done
if [ -z "$port" ] || [ ! -s "$pidfile" ]; then
    fail "the master is not serving after 10 s"
fi
url="http://127.0.0.1:$port/"
say "master $(cat "$pidfile") serving on $url; $rounds upgrades and $rounds reloads under load"

# The load: a few threads, one connection per request, paced so that a
# run stays far from exhausting ephemeral ports; bounded by time and by
# count, stopped early by the stop file (scripts/zero_downtime_client.py).
python3 "$root/scripts/zero_downtime_client.py" 127.0.0.1 "$port" "$stop_file" "$result" &
client=$!

indent() { sed 's/^/  /'; }
problems=()
expected_gen=""
for ((r = 1; r <= rounds; r++)); do
    if ! "$root/scripts/upgrade.sh" "$pidfile" 30 2>&1 | indent; then
        problems+=("upgrade $r of $rounds failed")
        break
    fi
    expected_gen=1
    if ! "$root/scripts/reload.sh" --url "$url" "$pidfile" 30 2>&1 | indent; then
        problems+=("reload $r of $rounds failed")
        break
    fi
    expected_gen=$((expected_gen + 1))
    if ! kill -0 "$client" 2>/dev/null; then
        problems+=("the load client ended early")
        break
    fi
done
newest="$(cat "$pidfile" 2>/dev/null || echo none)"

# A moment more of load, so that the last responses come after the old
# generation's retirement, then stop the client (it ends within one
# request's timeout).
sleep 0.5
touch "$stop_file"
wait "$client" || fail "the load client crashed"
client=""

ok=0 failed=0 last_master="" last_generation="" ended=""
while read -r key value rest; do
    case "$key" in
        ok) ok="$value" ;;
        failed) failed="$value" ;;
        last_master) last_master="$value" ;;
        last_generation) last_generation="$value" ;;
        ended) ended="$value" ;;
        reason) echo "  failure x$value: $rest" ;;
    esac
done <"$result"

echo "requests: $ok ok, $failed failed"
[ "$failed" -eq 0 ] || problems+=("$failed requests failed")
[ "$ended" = stop ] || problems+=("the client stopped at its $ended before the end")
[ "$ok" -ge 100 ] || problems+=("only $ok requests: too little load to mean anything")
if [ "${#problems[@]}" -gt 0 ]; then
    : # the expected last response is undefined after a failed step
elif [ "$last_master" != "$newest" ] || [ "$last_generation" != "$expected_gen" ]; then
    problems+=("last response from master $last_master generation $last_generation, expected master $newest generation $expected_gen")
else
    say "last response from the newest master $newest, generation $expected_gen"
fi

kill -TERM "$newest" 2>/dev/null || true
if session_gone 10; then
    say "master $newest stopped; no process left"
else
    problems+=("processes left 10 s after TERM: $(session_pids | tr '\n' ' ')")
fi

if [ "${#problems[@]}" -gt 0 ]; then
    for p in "${problems[@]}"; do
        echo "$me: FAILED: $p" >&2
    done
    exit 1
fi
say "ok: 0 failed across $rounds upgrades and $rounds reloads"
