# The bench's plan inside the guest (busybox sh). xtask fills in this run's values; every
# measurement prints one `KT-BENCH <run id> ...` line on the console, parsed by
# xtask/src/bench/mod.rs (`parse` documents the formats).
dmesg -n 1
KT=/opt/kt/ktls-trace
ID=@RUN_ID@
D=@SECONDS@
RUNS=@RUNS@
# Tracer configurations, NAME:KIND, run on the baseline mode, one after each load mode.
TRACERS="@TRACERS@"
# Tracers measured only in the first PATH_ROUNDS rounds (comparisons, not the targets).
EXTRAS="@EXTRAS@"
# In-kernel cost runs (trace --cost), NAME:KIND, once each after the rounds.
COSTS="@COSTS@"
BASELINE=@BASELINE@
say() { echo "KT-BENCH $ID $*"; }
now() { cut -d' ' -f1 /proc/uptime; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Voluntary context switches of all of a process's threads: about one per wake-up.
cswitches() { cat /proc/$1/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }
# The load modes come from the binary, so a new mode is measured without touching this.
MODES=$("$KT" load --list-modes | tr '\n' ' ')
say start kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) runs=$RUNS seconds=$D
say modes $MODES

# The bpftrace peer (xtask/src/bench/bpftrace.rs): bpftrace will not start with a kprobe on
# a function the kernel lacks, so the program of this kernel's era is picked here (the tls
# module is loaded: its functions are in kallsyms).
cat >/tmp/kt-sendmsg.bt <<'BT_EOF'
@BPFTRACE_SENDMSG@
BT_EOF
cat >/tmp/kt-sendpage.bt <<'BT_EOF'
@BPFTRACE_SENDPAGE@
BT_EOF
BT_PROGRAM=/tmp/kt-sendmsg.bt
grep -qw tls_sw_sendpage /proc/kallsyms && BT_PROGRAM=/tmp/kt-sendpage.bt
say "bpftrace $(bpftrace --version 2>&1 | head -n 1) program=$BT_PROGRAM"

# load MODE: one `ktls-trace load --json` report on stdout; rc in LOAD_RC, wall time in LOAD_WALL.
load() {
    opts="--tls 1.3 --cipher aes-128-gcm"
    [ "$1" = plain-sendfile ] && opts=""
    LT0=$(now)
    timeout $((D * 3 + 60)) "$KT" load --mode "$1" --duration "$D" --json $opts \
        >/tmp/load.out 2>/tmp/load.err
    LOAD_RC=$?
    LOAD_WALL=$(awk "BEGIN {print $(now) - $LT0}")
}

# tracer KIND: starts it in the background (TP) and waits until its probes are attached
# (ktls-trace says so on stderr; the bpftrace program's BEGIN prints READY on stdout).
tracer() {
    rm -f /tmp/tr.out /tmp/tr.err
    ready="ktls-trace: attached"
    ready_in=/tmp/tr.err
    case "$1" in
        trace) "$KT" trace --json >/tmp/tr.out 2>/tmp/tr.err & ;;
        top) "$KT" top --once --json --interval 60 >/tmp/tr.out 2>/tmp/tr.err & ;;
        trace-comm) "$KT" trace --json --comm ktls-load-srv >/tmp/tr.out 2>/tmp/tr.err & ;;
        trace-fentry) "$KT" trace --json --backend fentry >/tmp/tr.out 2>/tmp/tr.err & ;;
        cost-kprobe) "$KT" trace --json --cost --backend kprobe >/tmp/tr.out 2>/tmp/tr.err & ;;
        cost-fentry) "$KT" trace --json --cost --backend fentry >/tmp/tr.out 2>/tmp/tr.err & ;;
        bpftrace)
            bpftrace -f json "$BT_PROGRAM" >/tmp/tr.out 2>/tmp/tr.err &
            ready="@BPFTRACE_READY@"
            ready_in=/tmp/tr.out
            ;;
    esac
    TP=$!
    AT0=$(now)
    n=0
    until grep -q "$ready" $ready_in 2>/dev/null; do
        n=$((n + 1))
        if [ $n -gt 1200 ] || ! kill -0 $TP 2>/dev/null; then
            say "error tracer $1 did not attach: $(tail -n 3 /tmp/tr.err | tr '\n' ' ')"
            kill -KILL $TP 2>/dev/null; wait $TP 2>/dev/null
            TP=""
            return 1
        fi
        sleep 0.1
    done
    ATTACH=$(awk "BEGIN {print $(now) - $AT0}")
}

# stop: SIGTERM (trace and top end with their summary / snapshot), at most 60 s.
stop() {
    kill -TERM $TP 2>/dev/null
    ( sleep 60; kill -KILL $TP 2>/dev/null ) &
    wd=$!
    wait $TP
    TRC=$?
    kill $wd 2>/dev/null
    wait $wd 2>/dev/null
}

measure() { # NAME MODE TRACER ROUND
    if [ "$3" != none ]; then
        tracer "$3" || return
        TK0=$(ticks $TP)
        CS0=$(cswitches $TP)
    fi
    load "$2"
    if [ "$3" != none ]; then
        TK1=$(ticks $TP)
        CS1=$(cswitches $TP)
        alive=1; kill -0 $TP 2>/dev/null || alive=0
        stop
        # trace --json ends with its summary object; top --once --json prints one object;
        # bpftrace prints one JSON line per map at exit: gathered into one object.
        if [ "$3" = bpftrace ]; then
            summary=$(awk 'BEGIN { printf "{\"bpftrace\":[" }
                /^\{"type": *"map"/ { printf "%s%s", (n++ ? "," : ""), $0 }
                END { print "]}" }' /tmp/tr.out)
        else
            summary=$(tail -n 1 /tmp/tr.out)
        fi
        say "tracer $1 $4 rc=$TRC alive=$alive ticks=$((TK1 - TK0)) wakeups=$((CS1 - CS0)) attach_s=$ATTACH $summary"
        [ $TRC -eq 0 ] || say "error tracer $1 round $4 exited $TRC: $(tail -n 3 /tmp/tr.err | tr '\n' ' ')"
        rm -f /tmp/tr.out
    fi
    say "load $1 $4 rc=$LOAD_RC wall_s=$LOAD_WALL $(head -n 1 /tmp/load.out)"
    [ $LOAD_RC -eq 0 ] || say "error load $1 round $4 exited $LOAD_RC: $(tail -n 3 /tmp/load.err | tr '\n' ' ')"
}

# On a real machine udev loads the AES-NI module from the CPU's modalias; the guest has
# no udev, and without it 6.1's kernel TLS gets gcm(aes) from C AES (aes-generic).
modprobe aesni_intel 2>/dev/null
# Warm-up (page cache, crypto modules, first handshake, qemu's code cache); not measured.
load $BASELINE
say warmup rc=$LOAD_RC
# Which AES-GCM implementation kernel TLS got, and whether the (emulated) CPU offers AES-NI.
gcm=$(awk '/^name/ {n = $3} /^driver/ {if (n == "gcm(aes)") print $3}' /proc/crypto | sort -u | tr '\n' ' ')
say "crypto aesni=$(grep -q -w aes /proc/cpuinfo && echo yes || echo no) gcm_aes_drivers=$gcm"

# Each round: every mode untraced, with a tracer configuration after each of them, so the
# traced runs sit between untraced ones and a drift of the guest's speed during a round
# spreads over both sides.
# After the first PATH_ROUNDS rounds only the baseline runs untraced: the other paths'
# ratios barely move, the tracers' need the rounds.
PATH_ROUNDS=@PATH_ROUNDS@
r=1
while [ $r -le $RUNS ]; do
    set -- $TRACERS $EXTRAS
    modes=$MODES
    if [ $r -gt $PATH_ROUNDS ]; then
        modes=$BASELINE
        set -- $TRACERS
    fi
    for m in $modes; do
        measure "$m" "$m" none $r
        if [ $# -gt 0 ]; then
            measure "${1%%:*}" "$BASELINE" "${1#*:}" $r
            shift
        fi
    done
    for t in "$@"; do
        measure "${t%%:*}" "$BASELINE" "${t#*:}" $r
    done
    r=$((r + 1))
done
# What each program costs in the kernel: once per backend, after the rounds (counting run
# time adds clock reads to every program run, so these are not overhead runs).
for t in $COSTS; do
    measure "${t%%:*}" "$BASELINE" "${t#*:}" 1
done
say done uptime=$(now)
