#!/usr/bin/env bash
# Benchmark upgrader against gunicorn and against the practical limit of
# its design, on loopback, in one bounded run (the project's issue 7).
#
#   bash scripts/bench.sh            # full run (a few minutes); rewrites the
#                                    # generated section of BENCHMARKS.md
#   bash scripts/bench.sh --quick    # a few seconds per figure (CI); prints
#                                    # the table, leaves BENCHMARKS.md alone
#
# Options:
#   --quick          short mode: one 2 s wrk run per server, short windows
#   --output FILE    write the generated section to FILE instead of
#                    BENCHMARKS.md (full mode; with --quick too if given)
#   -h, --help       this text
#
# Environment:
#   UPGRADER_BIN=PATH      use this upgrader binary instead of building one
#   EXAMPLE_APP_BIN=PATH   use this upgrader-example-app binary
#   BENCH_DIR=DIR          cache and scratch directory (default
#                          /tmp/upgrader-bench): venv/ (gunicorn), target/
#                          (cargo builds), run/ (logs of the last run)
#
# What it measures (see BENCHMARKS.md for the figures and their analysis):
#  * steady throughput and p50/p99 latency (wrk -t2 -c64, 10 s; 2 s with
#    --quick) of (a) upgrader's built-in worker, (b) gunicorn sync with the
#    same worker count, (c) benches/raw-loop, a minimal accept-respond-close
#    loop with the same response bytes and process model, (d) upgrader
#    --exec with examples/rust-app vs the same app alone on a pre-bound
#    socket (systemd-socket-activate);
#  * USR2 -> new master serving, TERM -> promoted (and promotion lag after
#    the old master's exit), HUP -> new generation serving, worker SIGKILL
#    -> replacement serving: medians of 5 trials, for upgrader and gunicorn;
#  * the cost of one request when nothing amortizes it: one client at a
#    time against 8 workers, upgrader vs the raw loop (wall and CPU time,
#    context switches per request);
#  * the idle master's RSS, threads and wakeups per second, from /proc;
#  * (scripts/bench_reload.py) HUP time and peak worker count for -w 64
#    with --reload-batch 0, 8, 64, and the master's CPU time spent
#    measuring 64 workers' memory.
#
# Installs what is missing: wrk (apt-get), gunicorn (pip, in a venv under
# BENCH_DIR). Needs python3 and cargo. Every wait is bounded; a figure that
# cannot be measured is reported "n/a: reason" and the run still exits 0.
# Servers run in their own sessions; everything started is stopped on exit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
quick=0
output=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --output)
            [ $# -ge 2 ] || { echo "bench.sh: --output needs a file" >&2; exit 2; }
            output="$2"
            shift
            ;;
        --output=*) output="${1#--output=}" ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bench.sh: unknown argument: $1 (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done

# The exact command, as recorded in BENCHMARKS.md.
command_line="bash scripts/bench.sh"
[ "$quick" = 1 ] && command_line+=" --quick"
[ -n "$output" ] && command_line+=" --output $output"
[ -n "${UPGRADER_BIN:-}" ] && command_line="UPGRADER_BIN=$UPGRADER_BIN $command_line"
[ -n "${EXAMPLE_APP_BIN:-}" ] && command_line="EXAMPLE_APP_BIN=$EXAMPLE_APP_BIN $command_line"

bench_dir="${BENCH_DIR:-/tmp/upgrader-bench}"
mkdir -p "$bench_dir"
bench_dir="$(cd "$bench_dir" && pwd)"
run_dir="$bench_dir/run"
rm -rf "$run_dir"
mkdir -p "$run_dir"

say() { printf 'bench: %s\n' "$*" >&2; }

# Backstop cleanup: the Python driver stops everything it started; should
# it die, kill the process groups it recorded (each a server session it
# created), and only while they still exist as groups.
cleanup() {
    local pg
    if [ -f "$run_dir/pgids" ]; then
        while read -r pg; do
            [ -n "$pg" ] || continue
            if [ "$(ps -o pgid= -p "$pg" 2>/dev/null | tr -d ' ')" = "$pg" ]; then
                kill -KILL -- "-$pg" 2>/dev/null || true
            fi
        done <"$run_dir/pgids"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools ---------------------------------------------------------------

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        say "missing $*: install it (apt-get install $*) or run as root"
        exit 1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v python3 >/dev/null || apt_install python3
command -v cargo >/dev/null || { say "cargo is needed (https://rustup.rs)"; exit 1; }
command -v wrk >/dev/null || apt_install wrk

venv="$bench_dir/venv"
if ! "$venv/bin/gunicorn" --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian splits ensurepip out of python3.
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    say "pip install gunicorn (into $venv)"
    "$venv/bin/pip" install -q --disable-pip-version-check gunicorn
fi

# ---- builds (never into the repository's own target dir) ------------------

target="$bench_dir/target"
build() {
    say "cargo build --release --manifest-path $1"
    cargo build --release --quiet --manifest-path "$1" --target-dir "$target"
}

upgrader_bin="${UPGRADER_BIN:-}"
if [ -z "$upgrader_bin" ]; then
    build "$root/Cargo.toml"
    upgrader_bin="$target/release/upgrader"
fi
app_bin="${EXAMPLE_APP_BIN:-}"
if [ -z "$app_bin" ]; then
    build "$root/examples/rust-app/Cargo.toml"
    app_bin="$target/release/upgrader-example-app"
fi
build "$root/benches/raw-loop/Cargo.toml"
raw_bin="$target/release/raw-loop"
for b in "$upgrader_bin" "$app_bin" "$raw_bin"; do
    [ -x "$b" ] || { say "not an executable: $b"; exit 1; }
done

if [ -z "$output" ] && [ "$quick" = 0 ]; then
    output="$root/BENCHMARKS.md"
fi

# ---- machine ---------------------------------------------------------------

model="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
os_name="$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || true)"
revision="$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
if [ -n "${UPGRADER_BIN:-}" ]; then
    revision="repository at $revision; upgrader binary given"
else
    revision="built from the working tree at $revision"
fi

export BENCH_QUICK="$quick" BENCH_OUTPUT="$output" BENCH_RUN="$run_dir"
export BENCH_UPGRADER="$upgrader_bin" BENCH_APP="$app_bin" BENCH_RAW="$raw_bin"
BENCH_WRK="$(command -v wrk)"
BENCH_SSA="$(command -v systemd-socket-activate || true)"
BENCH_MACHINE="$(nproc) cores, ${model:-unknown CPU}, Linux $(uname -r)${os_name:+, $os_name}"
BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
export BENCH_WRK BENCH_SSA BENCH_MACHINE BENCH_DATE BENCH_GUNICORN="$venv/bin/gunicorn"
export BENCH_COMMAND="$command_line" BENCH_REVISION="$revision"

# The driver: scripts/bench.py (Python 3, standard library only); it reads
# the BENCH_* variables above.
python3 "$root/scripts/bench.py"
# Rolling reload (HUP time, peak workers) and memory sampling cost.
say "rolling reload and memory sampling (scripts/bench_reload.py)"
if [ "$quick" = 1 ]; then
    python3 "$root/scripts/bench_reload.py" "$upgrader_bin" --quick
else
    python3 "$root/scripts/bench_reload.py" "$upgrader_bin"
fi
