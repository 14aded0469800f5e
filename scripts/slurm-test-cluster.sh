#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for cagoflow's SLURM tests and CI.
#
#   scripts/slurm-test-cluster.sh start    write /etc/slurm/slurm.conf, start munged, slurmctld and
#                                          slurmd, wait until the node is idle (at most 60 s)
#   scripts/slurm-test-cluster.sh status   daemons and sinfo; exit 0 when the node is up, 3 when not
#   scripts/slurm-test-cluster.sh stop     cancel the jobs, stop slurmd, slurmctld and munged
#
# Needs root and slurm-wlm + munge (Debian: apt-get install -y slurm-wlm munge). The cluster:
# node `localhost` with CPUs and memory from nproc and /proc/meminfo, partitions `cpu` (default)
# and `gpu` (no GPU hardware: the name only routes jobs), consumable cores and memory with
# DefMemPerCPU so that single-core jobs run side by side, no accounting (sacct does not work;
# use squeue). `start` is idempotent: a cluster already up with the same slurm.conf is left
# alone; a changed slurm.conf restarts it. Logs: /var/log/slurm/{slurmctld,slurmd}.log.
set -euo pipefail
# The daemons, runuser and mungekey live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

readonly CONF_DIR=/etc/slurm
readonly CONF=$CONF_DIR/slurm.conf
readonly RUN_DIR=/run/slurm
readonly CTLD_PID=$RUN_DIR/slurmctld.pid
readonly SLURMD_PID=$RUN_DIR/slurmd.pid
readonly MUNGE_PID=/run/munge/munged.pid
readonly LOG_DIR=/var/log/slurm
readonly NODE=localhost
readonly START_TIMEOUT=60

say() { echo "slurm-test-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    echo "usage: $0 start|stop|status" >&2
    exit 2
}

check_prerequisites() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it writes $CONF and starts the SLURM daemons); try: sudo $0 $1"
    local missing=()
    for program in slurmctld slurmd munged sinfo squeue scontrol scancel; do
        command -v "$program" >/dev/null 2>&1 || missing+=("$program")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        die "SLURM is not installed (missing: ${missing[*]}); on Debian/Ubuntu: apt-get install -y slurm-wlm munge"
    fi
}

# The pid in FILE when that process is alive, else nothing.
live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

node_state() {
    timeout 10 sinfo --noheader --nodes="$NODE" --format=%t 2>/dev/null | head -n 1 || true
}

write_config() {  # the wanted slurm.conf on stdout
    local cpus mem_mb def_mem oversubscribe mpi_default
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the OpenMP variables of a calling task must not shrink the node
    # RealMemory a little below MemTotal: a node that reports less than its configured
    # memory is drained as invalid.
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)
    def_mem=$(( mem_mb / cpus < 2000 ? mem_mb / cpus : 2000 ))
    # Two single-core jobs (one per partition) must run at once: with 2+ cores they take a core
    # each; on a 1-core runner cores are shared by up to two jobs.
    if [ "$cpus" -ge 2 ]; then oversubscribe=NO; else oversubscribe=FORCE:2; fi
    # srun starts MPI programs (CP2K built with OpenMPI) through PMIx; SLURM's pmix plugin
    # needs the unversioned libpmix.so of libpmix-dev. Without it srun starts singletons.
    if ldconfig -p 2>/dev/null | grep -q 'libpmix\.so '; then mpi_default=pmix; else mpi_default=none; fi
    cat <<EOF
# Written by cagoflow scripts/slurm-test-cluster.sh: a one-node test cluster.
ClusterName=cagoflow-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=$mpi_default
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=$oversubscribe
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP OverSubscribe=$oversubscribe
EOF
}

start_munge() {
    if [ -n "$(live_pid "$MUNGE_PID")" ] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then mungekey --create --force; else create-munge-key -f; fi
    fi
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 || die "munged did not start (see /var/log/munge/munged.log)"
    munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munged runs but munge/unmunge fails (see /var/log/munge/munged.log)"
}

cluster_up() {  # daemons alive and the node usable
    [ -n "$(live_pid "$CTLD_PID")" ] && [ -n "$(live_pid "$SLURMD_PID")" ] || return 1
    case "$(node_state)" in idle* | mix* | alloc* | comp*) return 0 ;; *) return 1 ;; esac
}

start() {
    local wanted
    wanted=$(write_config)
    if cluster_up && [ "$wanted" = "$(cat "$CONF" 2>/dev/null)" ]; then
        say "already running (node $NODE: $(node_state))"
        return
    fi
    if [ -n "$(live_pid "$CTLD_PID")$(live_pid "$SLURMD_PID")" ]; then
        say "restarting: the running cluster is not usable or its slurm.conf changed"
        stop_daemons
    fi
    mkdir -p "$CONF_DIR" "$RUN_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd "$LOG_DIR"
    printf '%s\n' "$wanted" > "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
    start_munge
    # Daemonised (no -D), stdio detached: a caller that captures our output does not wait on them.
    # -c: no state from an earlier run (no stale jobs).
    slurmctld -c </dev/null >/dev/null 2>&1 || die "slurmctld did not start; see $LOG_DIR/slurmctld.log"
    slurmd -N "$NODE" </dev/null >/dev/null 2>&1 || die "slurmd did not start; see $LOG_DIR/slurmd.log"
    local waited=0 state=""
    while [ "$waited" -lt "$START_TIMEOUT" ]; do
        state=$(node_state)
        case "$state" in
            idle*) say "up: node $NODE idle after ${waited} s; partitions cpu (default) and gpu"; return ;;
        esac
        sleep 1
        waited=$((waited + 1))
    done
    say "error: node $NODE is not idle after ${START_TIMEOUT} s (state: '${state:-unknown}')"
    say "last lines of $LOG_DIR/slurmctld.log:"; tail -n 15 "$LOG_DIR/slurmctld.log" >&2 || true
    say "last lines of $LOG_DIR/slurmd.log:"; tail -n 15 "$LOG_DIR/slurmd.log" >&2 || true
    exit 1
}

stop_pid_file() {  # stop the process in FILE: TERM, then KILL after 10 s
    local pid waited=0
    pid=$(live_pid "$1")
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 20 ]; do sleep 0.5; waited=$((waited + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        say "$2 (pid $pid) did not stop on TERM; killing it"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

stop_daemons() {
    if [ -n "$(live_pid "$CTLD_PID")" ]; then
        # every job of the test cluster, whoever submitted it
        timeout 10 squeue --noheader --format=%i 2>/dev/null | xargs -r timeout 10 scancel >/dev/null 2>&1 || true
    fi
    stop_pid_file "$SLURMD_PID" slurmd
    stop_pid_file "$CTLD_PID" slurmctld
}

stop() {
    stop_daemons
    stop_pid_file "$MUNGE_PID" munged
    say "stopped"
}

status() {
    local name file
    for name in munged slurmctld slurmd; do
        case $name in munged) file=$MUNGE_PID ;; slurmctld) file=$CTLD_PID ;; slurmd) file=$SLURMD_PID ;; esac
        if [ -n "$(live_pid "$file")" ]; then echo "$name: running (pid $(live_pid "$file"))"; else echo "$name: not running"; fi
    done
    if cluster_up; then
        timeout 10 sinfo || true
        return 0
    fi
    echo "cluster: down"
    return 3
}

[ $# -eq 1 ] || usage
case "$1" in
    start) check_prerequisites "$1"; start ;;
    stop) check_prerequisites "$1"; stop ;;
    status) check_prerequisites "$1"; status ;;
    *) usage ;;
esac
