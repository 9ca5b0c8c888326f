#!/usr/bin/env bash
# Binary upgrade of a running upgrader master with plain kill(1): the
# USR2 / TERM procedure of upgrader(1), section UPGRADE PROCEDURE.
#
#   scripts/upgrade.sh PIDFILE [TIMEOUT_SECS]
#
#   1. kill -USR2 the master named by PIDFILE;
#   2. wait for PIDFILE.2: the new master writes it once its workers
#      are ready, so the old one may go;
#   3. kill -TERM the old master (unless it already retired by itself,
#      as it does with --auto-retire on, the default under systemd);
#   4. wait for the promotion: PIDFILE names the new master and
#      PIDFILE.2 is gone.
#
# TIMEOUT_SECS (default 65: the default --boot-timeout plus the default
# --graceful-timeout, plus 5) bounds the whole procedure. Exits 0 once
# the new master is promoted, 1 on failure (the old master then keeps
# serving unless it was already retired), 2 on a usage error. Progress
# goes to stdout, errors to stderr, one line each, so a deploy script
# can log them as they are.
#
# `upgrader -s upgrade --pid PIDFILE` does the same through the
# master's control socket and reports a failure's cause at once; this
# script needs nothing but bash, kill, ps and the pidfiles.
set -euo pipefail

me=upgrade.sh

usage() {
    echo "usage: scripts/upgrade.sh PIDFILE [TIMEOUT_SECS]" >&2
    exit 2
}

fail() {
    echo "$me: error: $*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help)
        sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    "" | -*) usage ;;
esac
[ $# -le 2 ] || usage
pidfile="$1"
timeout="${2:-65}"
if ! [[ "$timeout" =~ ^[1-9][0-9]*$ ]]; then
    usage
fi
dot2="$pidfile.2"
hint="the master's log (stderr, --log-file or journalctl) says why"

# The pid a pidfile holds, or nothing.
read_pid() {
    local p
    p="$(cat -- "$1" 2>/dev/null || true)"
    p="${p//[[:space:]]/}"
    if [[ "$p" =~ ^[1-9][0-9]*$ ]]; then
        echo "$p"
    fi
}

# Whether a process exists and is not a zombie (an exited master whose
# parent has not reaped it yet is gone for our purpose).
alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# The new master: a child of the old one that stays in the old one's
# process group (workers make process groups of their own right after
# the fork) and, where its environment is readable, has
# UPGRADER_PID=<old>.
find_new_master() {
    local old="$1" pgid pid g
    pgid="$(ps -o pgid= -p "$old" 2>/dev/null | tr -d ' ')" || return 0
    [ -n "$pgid" ] || return 0
    while read -r pid g; do
        [ "$g" = "$pgid" ] || continue
        if [ -r "/proc/$pid/environ" ]; then
            tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null |
                grep -qx "UPGRADER_PID=$old" || continue
        fi
        echo "$pid"
        return 0
    done < <(ps -o pid=,pgid= --ppid "$old" 2>/dev/null || true)
}

# SECONDS counts whole seconds: +1 so that a wait is never cut short.
deadline=$((SECONDS + timeout + 1))
expired() { [ "$SECONDS" -ge "$deadline" ]; }

old="$(read_pid "$pidfile")"
[ -n "$old" ] || fail "no pid in $pidfile (is the master running with --pid $pidfile?)"
alive "$old" || fail "master $old from $pidfile is not running"

if [ -e "$dot2" ]; then
    other="$(read_pid "$dot2")"
    if [ -n "$other" ] && alive "$other"; then
        fail "an upgrade is in progress: new master $other ($dot2); finish it (kill -TERM $old) or roll it back (kill -QUIT $other)"
    fi
    # Left by a new master that was SIGKILLed: it would pass for ready.
    echo "$me: removing stale $dot2${other:+ (pid $other is gone)}"
    rm -f -- "$dot2"
fi

kill -USR2 "$old" || fail "cannot signal master $old"
grace=$((SECONDS + 1 + (timeout < 3 ? timeout : 3)))
echo "$me: sent USR2 to master $old"

# Step 2: wait for the new master to be ready.
new=""
seen=""
while :; do
    if [ -e "$dot2" ]; then
        new="$(read_pid "$dot2")"
        if [ -n "$new" ] && [ "$new" != "$old" ] && alive "$new"; then
            echo "$me: new master $new ready"
            break
        fi
    fi
    if ! alive "$old"; then
        # Already retired and the new master promoted, between polls?
        cur="$(read_pid "$pidfile")"
        if [ -n "$cur" ] && [ "$cur" != "$old" ] && alive "$cur" && [ ! -e "$dot2" ]; then
            new="$cur"
            echo "$me: new master $new ready"
            break
        fi
        fail "master $old exited during the upgrade; $hint"
    fi
    [ -n "$seen" ] || seen="$(find_new_master "$old")"
    if [ -n "$seen" ] && ! alive "$seen" && [ ! -e "$dot2" ]; then
        fail "upgrade failed: new master $seen exited before it was ready; master $old keeps serving; $hint"
    fi
    # The old master forks at once on USR2: no child at all after a few
    # seconds means the new master died before we could see it (or the
    # USR2 was refused).
    if [ -z "$seen" ] && [ "$SECONDS" -ge "$grace" ] && [ ! -e "$dot2" ]; then
        fail "upgrade failed: no new master is running (it exited at once, or master $old refused the USR2); master $old keeps serving; $hint"
    fi
    if expired; then
        fail "upgrade failed: no new master ready within ${timeout}s${seen:+ (new master $seen still booting)}; master $old keeps serving; $hint"
    fi
    sleep 0.05
done

# Step 3: retire the old master, unless it did so by itself.
if alive "$old"; then
    # A TERM to a master that is already retiring changes nothing.
    if kill -TERM "$old" 2>/dev/null; then
        echo "$me: sent TERM to old master $old"
    else
        echo "$me: old master $old already retired"
    fi
else
    echo "$me: old master $old already retired (auto-retire)"
fi

# Step 4: the promotion. The old master drains its workers first, for up
# to its --graceful-timeout.
while :; do
    cur="$(read_pid "$pidfile")"
    if [ "$cur" = "$new" ] && [ ! -e "$dot2" ]; then
        echo "$me: upgrade complete: master $new promoted (was $old)"
        exit 0
    fi
    if ! alive "$new"; then
        fail "new master $new exited before its promotion; $hint"
    fi
    if expired; then
        if alive "$old"; then
            fail "old master $old still draining after ${timeout}s; new master $new serves alongside it"
        fi
        fail "new master $new not promoted within ${timeout}s ($pidfile names ${cur:-nothing}); $hint"
    fi
    sleep 0.1
done
