#!/usr/bin/env bash
# Reload a running upgrader master with plain kill(1): HUP, then wait
# until the new generation of workers serves.
#
#   scripts/reload.sh [--url URL] PIDFILE [TIMEOUT_SECS]
#
# On HUP the master re-reads its -c file and starts a new generation of
# workers; it retires the old generation only once every new worker is
# ready, and abandons the reload (the old generation keeps serving) when
# the file is invalid or the new workers cannot boot.
#
# The only outside sign of success is a response from the new
# generation. With --url, the script asks URL (with curl) before the HUP
# and then until the JSON "generation" field of a response from this
# master (its "master_pid") has increased: the built-in worker answers
# every GET with both fields. Without --url it sends the HUP and says
# that it cannot confirm the outcome.
#
# TIMEOUT_SECS (default 35: the default --boot-timeout plus 5) bounds
# the wait. Exits 0 once the new generation serves, 1 on failure (no
# master, no answer, or no new generation in time: the reload was
# rejected or its workers could not boot, and the old generation keeps
# serving), 2 on a usage error.
#
# `upgrader -s reload --pid PIDFILE` waits through the master's control
# socket instead, needs no URL, and reports a failure's cause at once.
set -euo pipefail

me=reload.sh

usage() {
    echo "usage: scripts/reload.sh [--url URL] PIDFILE [TIMEOUT_SECS]" >&2
    exit 2
}

fail() {
    echo "$me: error: $*" >&2
    exit 1
}

url=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --url)
            [ $# -ge 2 ] || usage
            url="$2"
            shift 2
            ;;
        --url=*)
            url="${1#--url=}"
            shift
            ;;
        --)
            shift
            args+=("$@")
            break
            ;;
        -*) usage ;;
        *)
            args+=("$1")
            shift
            ;;
    esac
done
if [ "${#args[@]}" -lt 1 ] || [ "${#args[@]}" -gt 2 ]; then
    usage
fi
pidfile="${args[0]}"
timeout="${args[1]:-35}"
if ! [[ "$timeout" =~ ^[1-9][0-9]*$ ]]; then
    usage
fi
hint="the master's log (stderr, --log-file or journalctl) says why"

read_pid() {
    local p
    p="$(cat -- "$1" 2>/dev/null || true)"
    p="${p//[[:space:]]/}"
    if [[ "$p" =~ ^[1-9][0-9]*$ ]]; then
        echo "$p"
    fi
}

alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# One integer field of a one-line JSON object, or nothing.
field() {
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p" <<<"$2"
}

# "GENERATION MASTER_PID" from one response to URL (MASTER_PID may be
# empty for an app that does not report it), or nothing.
probe() {
    local body gen mpid
    body="$(curl -fsS --max-time 2 -- "$url" 2>/dev/null)" || return 0
    gen="$(field generation "$body")"
    mpid="$(field master_pid "$body")"
    if [ -n "$gen" ]; then
        echo "$gen ${mpid:-}"
    fi
}

# SECONDS counts whole seconds: +1 so that a wait is never cut short.
deadline=$((SECONDS + timeout + 1))

pid="$(read_pid "$pidfile")"
[ -n "$pid" ] || fail "no pid in $pidfile (is the master running with --pid $pidfile?)"
alive "$pid" || fail "master $pid from $pidfile is not running"

if [ -z "$url" ]; then
    kill -HUP "$pid" || fail "cannot signal master $pid"
    echo "$me: sent HUP to master $pid; cannot confirm the reload without --url URL (or use: upgrader -s reload --pid $pidfile)"
    exit 0
fi
command -v curl >/dev/null || fail "--url needs curl"

# The generation now, from a response of this master (during an upgrade
# another master may answer too).
before=""
while :; do
    resp="$(probe)"
    gen="${resp%% *}"
    mpid="${resp#* }"
    if [ -n "$gen" ] && { [ -z "$mpid" ] || [ "$mpid" = "$pid" ]; }; then
        before="$gen"
        break
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "no JSON \"generation\" from master $pid at $url within ${timeout}s"
    sleep 0.1
done

kill -HUP "$pid" || fail "cannot signal master $pid"
echo "$me: sent HUP to master $pid (generation $before serving)"

while :; do
    resp="$(probe)"
    gen="${resp%% *}"
    mpid="${resp#* }"
    if [ -n "$gen" ] && [ "$gen" -gt "$before" ] &&
        { [ -z "$mpid" ] || [ "$mpid" = "$pid" ]; }; then
        echo "$me: reload complete: generation $gen serving"
        exit 0
    fi
    alive "$pid" || fail "master $pid exited during the reload; $hint"
    if [ "$SECONDS" -ge "$deadline" ]; then
        fail "reload failed: still generation $before after ${timeout}s (the config was rejected or the new workers could not boot; the old generation keeps serving); $hint"
    fi
    sleep 0.1
done
