#!/usr/bin/env bash
# systemd-check.sh - prove systemd/upgrader.socket and systemd/upgrader.service
# under a real systemd (252, PID 1 of a systemd-nspawn container booted by the
# shared test bed), with ExecStart pointed at the built binary:
#
#   * systemd-analyze verify prints nothing for the shipped units;
#   * socket activation on the first request, Type=notify READY=1;
#   * systemctl reload makes a new generation serve;
#   * two chained binary upgrades (USR2) under load: MainPID follows each
#     time, 0 failed requests, the unit stays active with NRestarts=0;
#   * systemctl stop after an upgrade drains gracefully (an in-flight slow
#     request completes) and the unit ends inactive, not failed; and the
#     negative control: without the unit's ExecStop= the same stop is not
#     graceful, so the check can fail;
#   * stop right after a hand-off while the old master still drains, and
#     stop while a new master is still booting: graceful too;
#   * with systemd 253+ in the container (TESTBED_ROOT=debootstrap with a newer
#     root fs), systemd/notify-reload.conf is installed and reload is synchronous.
#
# Usage (as root, no stdin needed; about 30 s, plus installing systemd-container once):
#   scripts/systemd-check.sh                 full check; ends with "N passed, N failed"
#   scripts/systemd-check.sh --verify-only   only systemd-analyze verify; silent on success
#
# Environment:
#   UPGRADER_BIN     the binary to test (default: `cargo build`, then target/debug/upgrader,
#                    honouring CARGO_TARGET_DIR)
#   TESTBED_SH       the test bed script (default: ../shared/systemd-testbed/testbed.sh
#                    next to the repository)
#   TESTBED_ROOT     host (default: boots the host's /usr, no debootstrap) or debootstrap
#   UPGCK_PORT       loopback port of the test socket (default 18391)
#   TESTBED_MACHINE, TESTBED_DIR   our own test bed name and state (default upgck,
#                    /var/tmp/upgck) so that we never touch anyone else's test bed
#
# Every wait is bounded; the test bed is always torn down (trap).
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNITS=$REPO/systemd
TESTBED_SH=${TESTBED_SH:-$REPO/../shared/systemd-testbed/testbed.sh}
HTTP_PY=$REPO/scripts/systemd_check_http.py   # the HTTP client and load (runs on the host)
PORT=${UPGCK_PORT:-18391}
UNIT=upgrader.service
SOCK=upgrader.socket
GRACEFUL=30          # --graceful-timeout in the shipped ExecStart
SLOW_MS=3000         # the in-flight request held across `systemctl stop`

export TESTBED_ROOT=${TESTBED_ROOT:-host}
export TESTBED_MACHINE=${TESTBED_MACHINE:-upgck}
export TESTBED_DIR=${TESTBED_DIR:-/var/tmp/upgck}
export TESTBED_PORT=$PORT
export TESTBED_HALT_S=${TESTBED_HALT_S:-15}

PASS=0
FAIL=0
TMP=
BOOTED=0
BG_PIDS=()

ok() { PASS=$((PASS + 1)); echo "PASS: $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
info() { echo "INFO: $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
eq() { [ -n "$1" ] && [ "$1" = "$2" ]; }
die() { echo "systemd-check: $*" >&2; exit 1; }
usage() { echo "usage: $0 [--verify-only]" >&2; exit 2; }

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
# wait_until SECONDS CMD...: poll CMD every 0.1 s, at most SECONDS
wait_until() {
    local end=$(($(now_ms) + $1 * 1000)); shift
    until "$@"; do
        [ "$(now_ms)" -ge "$end" ] && return 1
        sleep 0.1
    done
}

# ------------------------------------------------------------------ binary
find_binary() {
    if [ -n "${UPGRADER_BIN:-}" ]; then
        [ -x "$UPGRADER_BIN" ] || die "UPGRADER_BIN=$UPGRADER_BIN is not executable"
        BIN=$(cd "$(dirname "$UPGRADER_BIN")" && pwd)/$(basename "$UPGRADER_BIN")
        return
    fi
    cargo build --quiet --manifest-path "$REPO/Cargo.toml" </dev/null >&2 \
        || die "cargo build failed"
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug/upgrader
    [ -x "$BIN" ] || die "no binary at $BIN"
}
# The slow-request and exit seams (/_test/) are what the drain checks
# stand on; a release build without the test-hooks feature has none.
need_hooks() {
    grep -qa '/_test/' "$BIN" \
        || die "$BIN has no test hooks (a release build?): unset UPGRADER_BIN to use the debug build, or build with --features test-hooks"
}

# ------------------------------------------------------------------ verify
# A copy of the shipped units whose ExecStart names the built binary (verify
# insists the program exists); the man page from man/ if there is one.
# Prints systemd-analyze's complaints; silent and 0 when there are none.
verify_units() {
    local d out rc sdver
    d=$(mktemp -d /tmp/upgck-verify.XXXXXX) || return 1
    cp "$UNITS/upgrader.socket" "$d/"
    sed "s|^ExecStart=/usr/local/bin/upgrader|ExecStart=$BIN|" "$UNITS/upgrader.service" > "$d/upgrader.service"
    local man=(--man=no)
    if [ -f "$REPO/man/upgrader.1" ] && command -v man >/dev/null; then
        mkdir -p "$d/man/man1" && cp "$REPO/man/upgrader.1" "$d/man/man1/"
        man=()
    fi
    # Type=notify-reload exists from systemd 253 on; older versions warn about it.
    sdver=$(systemd-analyze --version | awk 'NR==1{print $2}')
    if [ "${sdver%%.*}" -ge 253 ] 2>/dev/null; then
        mkdir -p "$d/upgrader.service.d" && cp "$UNITS/notify-reload.conf" "$d/upgrader.service.d/"
    fi
    out=$(cd "$d" && MANPATH=$d/man SYSTEMD_LOG_COLOR=0 systemd-analyze verify "${man[@]}" \
        "$d/upgrader.socket" "$d/upgrader.service" 2>&1 </dev/null)
    rc=$?
    rm -rf "$d"
    [ -z "$out" ] && [ $rc = 0 ] && return 0
    printf '%s\n' "${out:-systemd-analyze verify exited $rc}"
    return 1
}

if [ "${1:-}" = --verify-only ]; then
    command -v systemd-analyze >/dev/null || die "systemd-analyze not found"
    find_binary
    verify_units
    exit
fi
[ $# = 0 ] || usage
[ "$(id -u)" = 0 ] || die "must run as root (systemd-nspawn)"
[ -x "$TESTBED_SH" ] || die "test bed not found: $TESTBED_SH (set TESTBED_SH)"
command -v python3 >/dev/null || die "python3 is needed (HTTP client and load)"

# ------------------------------------------------------------------ helpers
tb() { "$TESTBED_SH" "$@"; }
ct() { "$TESTBED_SH" exec "$@"; }         # inside the container (bounded: timeout 60)
sctl() { ct systemctl --no-pager "$@"; }
prop() { sctl show -P "$2" "$1" 2>/dev/null; }
state() { echo "$(prop $UNIT ActiveState)/$(prop $UNIT SubState)"; }
state_is() { [ "$(state)" = "$1" ]; }
mainpid() { prop $UNIT MainPID; }
mainpid_not() { local p; p=$(mainpid); [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$1" ]; }
alive() { ct kill -0 "$1" 2>/dev/null; }
gone() { ! alive "$1"; }
cursor() { ct journalctl -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p'; }
journal_after() { ct journalctl --no-pager -q -o cat -u $UNIT --after-cursor="$1"; }
journal_has() { journal_after "$1" | grep -qF -- "$2"; }
field() { sed -n "s/.*\"$1\":\\([0-9]*\\).*/\\1/p" <<<"$2"; }
http() { python3 "$HTTP_PY" "$@"; }
get() { http get "$PORT" / 5 2>/dev/null; }   # prints the JSON body of a 200
running_and_serving() { state_is active/running && status_serving; }
status_serving() { [[ "$(prop $UNIT StatusText)" == serving:* ]]; }
port_closed() { ! get >/dev/null 2>&1; }
answers_from() { local b; b=$(get) && eq "$(field master_pid "$b")" "$1"; }
gen_of() { local b; b=$(get) && eq "$(field master_pid "$b")/$(field generation "$b")" "$1/$2"; }
# SIGKILLs systemd logged after cursor $1 for processes that still existed.
# "Killing process N (n/a)" names a pid that was already gone (systemd could
# not even read its name): after a hand-off systemd still holds the alien
# main pid when that new master exits as the old master's child, so it
# "kills" it once more at the end of the stop; kill(2) then finds nothing.
sigkills() { journal_after "$1" | grep -E 'SIGKILL|code=killed|timed out' | grep -vF '(n/a) with signal SIGKILL'; }
ghost_kills() { journal_after "$1" | grep -cF '(n/a) with signal SIGKILL'; }
# run in the background in a session of its own, so that cleanup can end
# its whole process group by its id
bg() { setsid "$@" & BG_PIDS+=($!); }

cleanup() {
    local p
    trap - EXIT INT TERM
    for p in "${BG_PIDS[@]}"; do kill -- "-$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$BOOTED" = 1 ]; then tb teardown >/dev/null 2>&1 || echo "teardown failed" >&2; fi
    [ -n "$TMP" ] && rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ scenario steps
T0=$(now_ms)
TMP=$(mktemp -d /tmp/upgck.XXXXXX) || die "mktemp failed"
find_binary
need_hooks

echo "---- systemd-analyze verify (host: $(systemd-analyze --version | head -1))"
if out=$(verify_units); then
    ok "systemd-analyze verify prints nothing for upgrader.socket + upgrader.service"
else
    bad "systemd-analyze verify: $out"
fi

# The units as shipped, plus test-only drop-ins: ExecStart at the mounted
# binary (same options as shipped), the test hooks, our own port.
mkdir -p "$TMP/app" "$TMP/units/$SOCK.d" "$TMP/units/$UNIT.d"
cp "$BIN" "$TMP/app/upgrader"
cp "$UNITS/$SOCK" "$UNITS/$UNIT" "$TMP/units/"
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$PORT" > "$TMP/units/$SOCK.d/50-test.conf"
{
    printf '[Service]\nEnvironment=UPGRADER_TEST_HOOKS=1\nExecStart=\n'
    # The shipped --probation 10, shortened so that each reload and
    # upgrade of the scenario does not wait 10 s; the window still runs.
    sed -n 's|^ExecStart=/usr/local/bin/upgrader|ExecStart=/opt/upgrader/upgrader|p' "$UNITS/$UNIT" \
        | sed 's|--probation 10|--probation 2|'
} > "$TMP/units/$UNIT.d/50-test.conf"
grep -q '^ExecStart=/opt/upgrader/upgrader' "$TMP/units/$UNIT.d/50-test.conf" \
    || die "no ExecStart=/usr/local/bin/upgrader line in $UNITS/$UNIT"
export TESTBED_APP_DIR=$TMP/app TESTBED_UNITS_DIR=$TMP/units

if get >/dev/null 2>&1; then
    bad "port 127.0.0.1:$PORT already answers before the test (set UPGCK_PORT)"
    echo "$PASS passed, $FAIL failed"; exit 1
fi

echo "---- test bed (TESTBED_ROOT=$TESTBED_ROOT, machine $TESTBED_MACHINE)"
tb teardown >/dev/null 2>&1   # a stale container of ours from an interrupted run
timeout 600 "$TESTBED_SH" setup </dev/null || { bad "test bed setup"; echo "$PASS passed, $FAIL failed"; exit 1; }
BOOTED=1
timeout 120 "$TESTBED_SH" boot </dev/null || { bad "test bed boot"; echo "$PASS passed, $FAIL failed"; exit 1; }
CT_SD=$(ct systemctl --version | awk 'NR==1{print $2}')
NOTIFY_RELOAD=0
TYPE=notify
if [ "${CT_SD%%.*}" -ge 253 ] 2>/dev/null; then   # install the drop-in as a 253+ user would
    cp "$UNITS/notify-reload.conf" "$TMP/units/$UNIT.d/"
    NOTIFY_RELOAD=1
    TYPE=notify-reload
fi
info "container: systemd $CT_SD; Type=$TYPE"
C0=$(cursor)
tb install-units >/dev/null 2>&1
execstop=$(prop $UNIT ExecStop)
# shellcheck disable=SC2016  # the literal shell text systemd must hand to /bin/sh
check "ExecStop= is one /bin/sh -c script: $execstop" grep -qF 'argv[]=/bin/sh -c pg=$$(ps -o pgid= -p "$$MAINPID") || exit 0; pg=$${pg##* };' <<<"$execstop"
check "units installed: $UNIT loaded (Type=$(prop $UNIT Type) NotifyAccess=$(prop $UNIT NotifyAccess) KillMode=$(prop $UNIT KillMode) TimeoutStopUSec=$(prop $UNIT TimeoutStopUSec))" \
    eq "$(prop $UNIT LoadState)/$(prop $UNIT Type)/$(prop $UNIT NotifyAccess)/$(prop $UNIT KillMode)" loaded/$TYPE/main/mixed
out=$(ct systemd-analyze verify --man=no /etc/systemd/system/$SOCK /etc/systemd/system/$UNIT 2>&1)
extra=
[ "$NOTIFY_RELOAD" = 1 ] && extra=" and notify-reload.conf"
check "systemd-analyze verify inside the container (systemd $CT_SD, with the test drop-ins$extra) prints nothing${out:+: $out}" [ -z "$out" ]
warn=$(ct journalctl --no-pager -q -o cat _PID=1 --after-cursor="$C0" | grep -E 'upgrader\.(service|socket)|/etc/systemd/system/upgrader' )
check "systemd loaded the units without a warning${warn:+: $warn}" [ -z "$warn" ]
sctl stop $UNIT $SOCK >/dev/null 2>&1
sctl reset-failed >/dev/null 2>&1

echo "---- socket activation"
check "systemctl start $SOCK" sctl start $SOCK
check "$SOCK is active/listening, $UNIT not started yet ($(prop $UNIT ActiveState))" \
    eq "$(prop $SOCK ActiveState)/$(prop $SOCK SubState)/$(prop $UNIT ActiveState)" active/listening/inactive
body=$(http get "$PORT" / 5 2>&1)
check "the first request is answered (body: $body)" eq "${body:0:1}" "{"
check "the service became active/running (READY=1)" wait_until 5 state_is active/running
PID1=$(mainpid)
check "MainPID $PID1 is the master that answered" eq "$(field master_pid "$body")" "$PID1"
wait_until 5 status_serving
check "StatusText after READY=1: '$(prop $UNIT StatusText)'" status_serving

# reload_sync CURSOR: with Type=notify-reload, `systemctl reload` returned only
# after READY=1 (StatusText already the new generation's) and systemd's signal
# was the only HUP (one reload, not two)
reload_sync() {
    [ "$NOTIFY_RELOAD" = 1 ] || return 0
    local st n
    st=$(prop $UNIT StatusText)
    n=$(journal_after "$1" | grep -c 'reload: generation')
    check "notify-reload: systemctl reload returned after READY=1 (StatusText right after: '$st'), and HUP came once ($n reload)" \
        eq "${st%%,*}/$n" "serving: generation $2/1"
}
if [ "$NOTIFY_RELOAD" = 1 ]; then
    echo "---- reload (Type=notify-reload: systemd sends SIGHUP and waits for READY=1)"
else
    echo "---- reload (ExecReload=kill -HUP \$MAINPID)"
fi
c=$(cursor)
check "systemctl reload $UNIT" sctl reload $UNIT
reload_sync "$c" 2
check "a new generation serves: generation 2 from master $PID1" wait_until 10 gen_of "$PID1" 2
check "the master announced the reload (journal: reload complete)" wait_until 5 journal_has "$c" "reload complete"
wait_until 5 status_serving
check "active/running after the reload (READY=1 after RELOADING=1), StatusText '$(prop $UNIT StatusText)'" \
    running_and_serving

# upgrade N: USR2 under load, wait for MainPID to follow and the new master to answer
upgrade() {
    local n=$1 old new c load res okc failc
    old=$(mainpid)
    c=$(cursor)
    rm -f "$TMP/stop$n"
    bg python3 "$HTTP_PY" load "$PORT" "$TMP/stop$n" 40 4 "$TMP/load$n"
    load=$!
    sleep 0.5
    check "upgrade $n: systemctl kill -s USR2 --kill-whom=main $UNIT" sctl kill -s USR2 --kill-whom=main $UNIT
    if wait_until 20 mainpid_not "$old"; then
        new=$(mainpid)
        ok "upgrade $n: MainPID followed $old -> $new"
    else
        new=
        bad "upgrade $n: MainPID still $(mainpid) after 20 s"
    fi
    check "upgrade $n: the new master $new answers" wait_until 10 answers_from "${new:-none}"
    check "upgrade $n: the old master $old is gone" wait_until $((GRACEFUL + 5)) gone "$old"
    check "upgrade $n: journal: 'promoted: old master $old is gone'" \
        wait_until 5 journal_has "$c" "promoted: old master $old is gone"
    sleep 0.5                          # a little load on the new master alone
    touch "$TMP/stop$n"
    wait "$load" 2>/dev/null
    res=$(cat "$TMP/load$n" 2>/dev/null)
    okc=$(sed -n 's/^ok=\([0-9]*\).*/\1/p' <<<"$res")
    failc=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$res")
    check "upgrade $n: no failed request under load ($res)" eq "${okc:-0}/$failc" "${okc:-x}/0"
    [ "${okc:-0}" -gt 0 ] || bad "upgrade $n: the load generator made no request"
    check "upgrade $n: unit $(state), NRestarts=$(prop $UNIT NRestarts)" \
        eq "$(state)/$(prop $UNIT NRestarts)" active/running/0
    wait_until 5 status_serving
    check "upgrade $n: the new master's READY=1/STATUS= accepted: '$(prop $UNIT StatusText)'" status_serving
    local ppid
    ppid=$(ct ps -o ppid= -p "${new:-1}" 2>/dev/null | tr -d ' ')
    check "upgrade $n: the new master is a child of the container's PID 1 (PPID $ppid)" eq "$new/$ppid" "${new:-x}/1"
    local refused
    refused=$(ct journalctl --no-pager -q -o cat _PID=1 --after-cursor="$c" | grep -E 'notification message|reception only permitted')
    check "upgrade $n: systemd refused no notification${refused:+: $refused}" [ -z "$refused" ]
    local hint
    hint=$(journal_after "$c" | grep -m1 'not our child')
    [ -n "$hint" ] && info "upgrade $n: systemd said: $hint"
    LAST_NEW=$new
}

echo "---- binary upgrade 1 (USR2 to the main pid, 4 clients of load)"
upgrade 1
PID2=$LAST_NEW
echo "---- binary upgrade 2, chained"
upgrade 2
PID3=$LAST_NEW
[ "$PID3" != "$PID2" ] || bad "upgrade 2 did not change the master"

echo "---- reload after the upgrades reaches the new main pid"
c=$(cursor)
check "systemctl reload $UNIT" sctl reload $UNIT
reload_sync "$c" 2
check "generation 2 from master $PID3" wait_until 10 gen_of "${PID3:-none}" 2

# stop_with_slow_request LABEL: a slow request in flight, then systemctl stop;
# sets STOP_SECS, SLOW_RC, SLOW_BODY, STOP_CURSOR
stop_with_slow_request() {
    local t
    rm -f "$TMP/head" "$TMP/slow"
    bg python3 "$HTTP_PY" slow "$PORT" "/_test/slow?ms=$SLOW_MS" "$TMP/head" "$TMP/slow" 20
    local sp=$!
    check "$1: a ${SLOW_MS} ms request is in flight (response head received)" wait_until 5 test -e "$TMP/head"
    STOP_CURSOR=$(cursor)
    t=$(now_ms)
    check "$1: systemctl stop $UNIT returns 0" timeout 90 "$TESTBED_SH" exec systemctl stop $UNIT
    STOP_SECS=$(( ($(now_ms) - t) / 100 ))   # tenths
    STOP_SECS="$((STOP_SECS / 10)).$((STOP_SECS % 10))"
    wait "$sp" 2>/dev/null
    SLOW_RC=$(sed -n 's/^rc=//p' "$TMP/slow" 2>/dev/null)
    SLOW_BODY=$(grep '^{' "$TMP/slow" 2>/dev/null)
}

echo "---- systemctl stop after the upgrades (ExecStop= waits for the master)"
stop_with_slow_request "stop"
check "stop: the in-flight request completed (rc=$SLOW_RC, body $SLOW_BODY)" eq "$SLOW_RC/$(field master_pid "$SLOW_BODY")" "0/$PID3"
check "stop: waited for the drain (${STOP_SECS} s, expected about $((SLOW_MS / 1000)) s, under TimeoutStopSec)" \
    awk -v s="$STOP_SECS" -v m="$SLOW_MS" 'BEGIN{exit !(s >= m/1000 - 1.5 && s < 45)}'
check "stop: unit $(state), Result=$(prop $UNIT Result)" eq "$(state)/$(prop $UNIT Result)" inactive/dead/success
killed=$(sigkills "$STOP_CURSOR")
check "stop: nothing was SIGKILLed${killed:+: $killed}" [ -z "$killed" ]
drained() { journal_has "$STOP_CURSOR" "graceful stop" && journal_has "$STOP_CURSOR" "master exiting"; }
check "stop: the master drained and exited (journal: graceful stop ... master exiting)" wait_until 5 drained

echo "---- the socket re-activates the service"
body=$(get)
check "a request after the stop starts a fresh master (body: $body)" \
    eq "$(field generation "$body")/$(field master_pid "$body")" "1/$(mainpid)"

echo "---- negative control: the same stop without the unit's ExecStop= (proves the check can fail)"
ct mkdir -p /run/systemd/system/$UNIT.d
printf '[Service]\nExecStop=\n' | ct sh -c "cat > /run/systemd/system/$UNIT.d/90-no-execstop.conf"
sctl daemon-reload
upgrade_quick() {  # USR2 without load and wait for the hand-off
    local old; old=$(mainpid)
    sctl kill -s USR2 --kill-whom=main $UNIT && wait_until 20 mainpid_not "$old" \
        && wait_until 10 answers_from "$(mainpid)" && wait_until 10 gone "$old"
}
if upgrade_quick; then
    stop_with_slow_request "no ExecStop"
    if [ "$SLOW_RC" != 0 ] && [ "$(prop $UNIT Result)" = signal ]; then
        ok "no ExecStop: systemd SIGKILLed the new master at once (${STOP_SECS} s; request rc=$SLOW_RC; unit $(state), Result=$(prop $UNIT Result))"
    else
        bad "no ExecStop: the stop was graceful anyway (${STOP_SECS} s; request rc=$SLOW_RC; unit $(state), Result=$(prop $UNIT Result))"
    fi
else
    bad "no ExecStop: could not set up the upgrade"
fi
ct rm -rf /run/systemd/system/$UNIT.d
sctl daemon-reload
sctl reset-failed $UNIT >/dev/null 2>&1

echo "---- stop right after a hand-off, while the old master still drains a request"
get >/dev/null
rm -f "$TMP/head" "$TMP/slow"
bg python3 "$HTTP_PY" slow "$PORT" "/_test/slow?ms=$SLOW_MS" "$TMP/head" "$TMP/slow" 20
sp=$!
old=$(mainpid)
if wait_until 5 test -e "$TMP/head" && sctl kill -s USR2 --kill-whom=main $UNIT && wait_until 20 mainpid_not "$old"; then
    check "drain window: old master $old still drains the request when the stop begins" alive "$old"
    c=$(cursor)
    t=$(now_ms)
    check "drain window: systemctl stop $UNIT returns 0" timeout 90 "$TESTBED_SH" exec systemctl stop $UNIT
    t=$(( ($(now_ms) - t) / 100 ))
    wait "$sp" 2>/dev/null
    rc=$(sed -n 's/^rc=//p' "$TMP/slow" 2>/dev/null)
    body=$(grep '^{' "$TMP/slow" 2>/dev/null)
    check "drain window: the old master's in-flight request completed (rc=$rc, body $body; stop took $((t / 10)).$((t % 10)) s)" \
        eq "$rc/$(field master_pid "$body")" "0/$old"
    killed=$(sigkills "$c")
    check "drain window: unit $(state), Result=$(prop $UNIT Result), nothing SIGKILLed${killed:+: $killed}" \
        eq "$(state)/$(prop $UNIT Result)/$killed" inactive/dead/success/
    n=$(ghost_kills "$c")
    [ "$n" -gt 0 ] && info "drain window: systemd logged $n 'Killing process N (n/a)' line(s) for the new master that had already exited as the old master's child (a stale alien main pid; nothing was there to kill)"
else
    bad "drain window: could not set up the slow request and the upgrade"
fi

echo "---- probation (SPEC 13): a reload to a release that crashes 2 s after start rolls back"
ct mkdir -p /run/systemd/system/$UNIT.d
release() {  # release 'exec = [...]' : the variant's config file
    printf 'exec = %s\n' "$1" | ct sh -c 'cat > /run/upgck.toml'
}
release '["/bin/sleep", "600"]'
printf '[Service]\nExecStart=\nExecStart=/opt/upgrader/upgrader --workers 2 --probation 3 -c /run/upgck.toml\n' \
    | ct sh -c "cat > /run/systemd/system/$UNIT.d/80-probation.conf"
sctl daemon-reload
if sctl start $UNIT && wait_until 10 state_is active/running; then
    old=$(mainpid)
    c=$(cursor)
    wait_until 10 journal_has "$c" "first generation passed its probation"
    release '["/bin/sh", "-c", "echo release 2 crashes >&2; sleep 2; exit 1"]'
    c=$(cursor)
    sctl reload $UNIT
    if wait_until 15 journal_has "$c" "reload rolled back"; then
        ok "probation: the journal has '$(journal_after "$c" | grep -m1 -o 'reload rolled back:.*')'"
    else
        bad "probation: no 'reload rolled back' in the journal within 15 s"
    fi
    wait_until 5 state_is active/running
    st=$(prop $UNIT StatusText)
    check "probation: unit $(state), MainPID $(mainpid) (still $old), StatusText names the failure: '$st'" \
        eq "$(state)/$(mainpid)/${st%%:*}" "active/running/$old/reload rolled back"
    release '["/bin/sleep", "600"]'
    c=$(cursor)
    sctl reload $UNIT
    check "probation: the next reload (a good release) completes (journal: reload complete)" \
        wait_until 15 journal_has "$c" "reload complete"
    sctl stop $UNIT
else
    bad "probation: could not start the probation variant"
fi
ct rm -rf /run/systemd/system/$UNIT.d /run/upgck.toml
sctl daemon-reload

echo "---- a new master that is still booting (exec worker ready after 3 s): rollback, then stop"
ct mkdir -p /run/systemd/system/$UNIT.d
printf '[Service]\nExecStart=\nExecStart=/opt/upgrader/upgrader --workers 1 --ready delay:3 --exec /bin/sleep 600\n' \
    | ct sh -c "cat > /run/systemd/system/$UNIT.d/90-slow-boot.conf"
sctl daemon-reload
if sctl start $UNIT; then
    old=$(mainpid)
    if [ "$NOTIFY_RELOAD" = 1 ]; then
        t=$(now_ms)
        sctl reload $UNIT
        t=$(( ($(now_ms) - t) / 100 ))
        check "notify-reload: systemctl reload waited for the new generation to be ready ($((t / 10)).$((t % 10)) s, ready after 3 s; '$(prop $UNIT StatusText)')" \
            [ "$t" -ge 25 ]
    fi
    # rollback (SPEC 7.5): TERM to the booting new master ends the attempt;
    # the unit must not notice (NotifyAccess=main drops anything it sends)
    c=$(cursor)
    sctl kill -s USR2 --kill-whom=main $UNIT
    wait_until 5 journal_has "$c" "spawned"
    new=$(journal_after "$c" | sed -n 's/.*USR2: new master \([0-9]*\) spawned.*/\1/p' | head -1)
    sleep 0.5
    ct kill -TERM "${new:-0}"
    wait_until 10 journal_has "$c" "upgrade failed"
    check "rollback: TERM to the booting new master $new: unit $(state), MainPID $(mainpid) (still $old)" \
        eq "$(state)/$(mainpid)" "active/running/$old"
    refused=$(ct journalctl --no-pager -q -o cat _PID=1 --after-cursor="$c" | grep -E 'notification message')
    [ -n "$refused" ] && info "rollback: systemd refused (NotifyAccess=main): $refused"
    c=$(cursor)
    sctl kill -s USR2 --kill-whom=main $UNIT
    wait_until 5 journal_has "$c" "spawned"
    sleep 0.5
    t=$(now_ms)
    check "booting: systemctl stop $UNIT returns 0" timeout 90 "$TESTBED_SH" exec systemctl stop $UNIT
    t=$(( ($(now_ms) - t) / 100 ))
    killed=$(sigkills "$c")
    check "booting: stopped in $((t / 10)).$((t % 10)) s, unit $(state), Result=$(prop $UNIT Result), nothing SIGKILLed${killed:+: $killed}" \
        eq "$(state)/$(prop $UNIT Result)/$killed" inactive/dead/success/
    check "booting: the master $old stopped (no upgrade was left behind): $(journal_after "$c" | grep -m1 -E 'upgrade failed|upgrade:.*(failed|exited)')" \
        gone "$old"
else
    bad "booting: could not start the slow-booting variant"
fi
ct rm -rf /run/systemd/system/$UNIT.d
sctl daemon-reload

echo "---- clean up"
sctl stop $UNIT $SOCK >/dev/null 2>&1
check "socket and service stopped, port $PORT closed" wait_until 5 port_closed
if [ "$FAIL" = 0 ]; then
    echo "---- journal of $UNIT (last 30 lines)"
    ct journalctl --no-pager -o short-monotonic -u $UNIT -n 30
else
    echo "---- journal of $UNIT (all of it, since a check failed)"
    ct journalctl --no-pager -o short-monotonic -u $UNIT
fi
info "checks took $(( ($(now_ms) - T0) / 1000 )) s"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
