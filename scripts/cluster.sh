#!/usr/bin/env bash
# A single-node SLURM cluster and a shared MLflow server on PostgreSQL, on loopback, for trying (and
# testing) the cluster path of the pipeline on one machine:
#
#   scripts/cluster.sh up      # start what is not running; prints the partition and the tracking URI
#   scripts/cluster.sh down    # stop everything it started (the state folder stays: the next up is quick)
#   scripts/cluster.sh purge   # down, then delete the state folder
#   scripts/cluster.sh env     # the environment lines (SLURM_CONF=...) for a running cluster
#
# Everything lives in one private state folder, PIPELINE_CLUSTER_DIR (default
# /tmp/pipeline-cluster-$UID): configs, databases, sockets, logs, pid files. Ports are chosen free
# on the first `up` and kept there; nothing is written under /etc or /run, and no system service is
# touched. The parts, in start order: munged (its own key and socket), MariaDB, slurmdbd (accounting:
# submitit reads job states with sacct), slurmctld, slurmd (one node), PostgreSQL and `mlflow server`.
# Missing Debian packages are installed with apt-get (root, or sudo without a password).
# PYTHON names the interpreter with MLflow and psycopg2 (default: .venv/bin/python, else python3).
# docs/cluster.md says how this maps onto a real cluster.
set -euo pipefail

STATE=${PIPELINE_CLUSTER_DIR:-/tmp/pipeline-cluster-$(id -u)}
PARTITION=${PIPELINE_CLUSTER_PARTITION:-debug}
NODE=pipeline-node
CLUSTER=pipeline
ME=$(id -un)
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server postgresql)

say() { echo "cluster: $*" >&2; }
die() { say "$*"; exit 1; }

# --- packages ------------------------------------------------------------------------------------

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

missing_packages() {
  local missing=()
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null || missing+=(slurm-wlm)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v munged >/dev/null || missing+=(munge)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [ -n "$(pg_bin)" ] || missing+=(postgresql)
  echo "${missing[@]}"
}

install_packages() {
  local missing
  missing=$(missing_packages)
  [ -z "$missing" ] && return 0
  say "installing Debian packages: $missing"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || die "missing packages ($missing) and apt-get needs root: sudo apt-get install $missing"
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  # shellcheck disable=SC2086
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  # their post-install scripts may start the system's own daemons (not on every machine): ours are separate
}

# --- state ---------------------------------------------------------------------------------------

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

prepare_state() {
  mkdir -p "$STATE"/{etc,log,run,munge,slurmctld,slurmd}
  # munged refuses a socket folder that is not world-executable; so does postgres' socket for its user
  chmod 755 "$STATE" "$STATE/munge" "$STATE/run"
  if [ ! -f "$STATE/ports.env" ]; then
    free_port >/dev/null || die "python3 is needed to choose free ports"
    {
      echo "CTLD_PORT=$(free_port)"; echo "SLURMD_PORT=$(free_port)"; echo "DBD_PORT=$(free_port)"
      echo "MARIADB_PORT=$(free_port)"; echo "PG_PORT=$(free_port)"; echo "MLFLOW_PORT=$(free_port)"
    } >"$STATE/ports.env"
  fi
  # shellcheck disable=SC1091
  source "$STATE/ports.env"
  MUNGE_SOCKET=$STATE/munge/munge.socket
  TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
  export SLURM_CONF=$STATE/etc/slurm.conf
}

running() {  # running NAME: the pid in run/NAME.pid is alive
  local pid
  pid=$(cat "$STATE/run/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up within ${seconds} s (logs in $STATE/log)"
    sleep 0.3
  done
}

# --- munge ---------------------------------------------------------------------------------------

start_munge() {
  running munged && return 0
  if [ ! -f "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge/munge.key"
  fi
  munged --force --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
  wait_for 20 munged bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
}

# --- MariaDB (slurmdbd's store) ------------------------------------------------------------------

mariadb_cli() { mariadb --socket="$STATE/run/mariadb.sock" -u "$ME" "$@"; }

start_mariadb() {
  running mariadb && return 0
  local fresh=
  if [ ! -d "$STATE/mariadb/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$STATE/mariadb" --user="$ME" --auth-root-authentication-method=socket \
      >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $STATE/log/mariadb-install.log"
    fresh=1
  fi
  (mariadbd --no-defaults --datadir="$STATE/mariadb" --socket="$STATE/run/mariadb.sock" --port="$MARIADB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadb.pid" --log-error="$STATE/log/mariadb.log" \
    --user="$ME" --innodb-buffer-pool-size=64M >/dev/null 2>&1 &)
  wait_for 60 MariaDB mariadb_cli -e "select 1"
  if [ -n "$fresh" ]; then
    mariadb_cli -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  fi
}

# --- SLURM ---------------------------------------------------------------------------------------

write_slurm_configs() {
  local cpus memory
  cpus=$(nproc)
  memory=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 3 / 4))
  cat >"$STATE/etc/slurm.conf" <<EOF
# written by scripts/cluster.sh: one node on loopback, everything under $STATE
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$ME
SlurmdUser=$ME
AuthType=auth/munge
CredType=cred/munge
# a private munge socket is named here and in AccountingStoragePass, else slurmctld and sacctmgr meet
# "Protocol authentication error" from slurmdbd
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups needed: track processes by their parent, bind nothing, gather no usage
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# submitit reads job states with sacct: accounting must run (else a cancelled job's state stays unknown)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# without a default each job asks for the whole node's memory, and the jobs run one at a time
DefMemPerCPU=1024
ReturnToService=2
KillWait=5
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$(hostname -s) CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  cat >"$STATE/etc/slurmdbd.conf" <<EOF
# written by scripts/cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=$ME
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/etc/slurmdbd.conf"  # slurmdbd refuses a config others can read (it holds the password)
}

start_slurm() {
  write_slurm_configs
  if ! running slurmdbd; then
    slurmdbd
    wait_for 60 slurmdbd sacctmgr -n show cluster
  fi
  sacctmgr -n show cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  if ! running slurmctld; then
    slurmctld
    wait_for 60 slurmctld scontrol ping
  fi
  if ! running slurmd; then
    slurmd -N "$NODE"
  fi
  wait_for 60 "the SLURM node" bash -c "sinfo -h -N -o %t -n $NODE | grep -Eq '^(idle|mix|alloc)'"
}

# --- PostgreSQL and the MLflow server --------------------------------------------------------------

as_pg() {  # postgres refuses to run as root: as root, its own system user runs it
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin
  bin=$(pg_bin)
  if [ ! -f "$STATE/postgres/PG_VERSION" ]; then
    mkdir -p "$STATE/postgres"
    [ "$(id -u)" -ne 0 ] || chown postgres "$STATE/postgres"
    as_pg "$bin/initdb" -D "$STATE/postgres" -U mlflow --auth=trust >"$STATE/log/initdb.log" 2>&1 \
      || die "initdb failed: $STATE/log/initdb.log"
  fi
  mkdir -p "$STATE/postgres-run"
  touch "$STATE/log/postgres.log"
  [ "$(id -u)" -ne 0 ] || chown postgres "$STATE/postgres-run" "$STATE/log/postgres.log"
  if ! as_pg "$bin/pg_ctl" -D "$STATE/postgres" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$STATE/postgres" -l "$STATE/log/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -k $STATE/postgres-run -c listen_addresses=127.0.0.1" start >/dev/null
  fi
  as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U mlflow -d postgres -tAc "select 1 from pg_database where datname='mlflow'" \
    | grep -q 1 || as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U mlflow mlflow
}

mlflow_up() { "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$TRACKING_URI/health', timeout=2)"; }

start_mlflow() {
  running mlflow && mlflow_up && return 0
  "$PYTHON" -c "import mlflow, psycopg2" 2>/dev/null \
    || die "$PYTHON lacks mlflow or psycopg2: make setup (psycopg2-binary is a dev dependency), or PYTHON=..."
  # postgresql+psycopg2: a bare postgresql:// makes the newer SQLAlchemy look for psycopg 3.
  # Its own session (setsid): `down` stops the server's whole process group, its workers too.
  setsid "$PYTHON" -m mlflow server \
    --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow" \
    --artifacts-destination "file://$STATE/mlflow-artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    >>"$STATE/log/mlflow.log" 2>&1 </dev/null &
  echo $! >"$STATE/run/mlflow.pid"
  # the first start on an empty database runs MLflow's migrations (about a minute)
  wait_for 240 "the MLflow server" mlflow_up
}

# --- stopping ------------------------------------------------------------------------------------

stop_pid() {  # stop_pid NAME [group]: SIGTERM (to the process group with `group`), wait (10 s), then SIGKILL
  local pid target waits=100
  pid=$(cat "$STATE/run/$1.pid" 2>/dev/null) || return 0
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || { rm -f "$STATE/run/$1.pid"; return 0; }
  target=$pid
  # the MLflow server keeps nothing of its own (PostgreSQL does), and its workers can take long to go
  [ "${2:-}" != group ] || { target=-$pid; waits=30; }
  kill -TERM -- "$target" 2>/dev/null || true
  for _ in $(seq $waits); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "$target" 2>/dev/null || true
  rm -f "$STATE/run/$1.pid"
}

stop_postgres() {
  local bin
  bin=$(pg_bin)
  if [ -n "$bin" ] && [ -f "$STATE/postgres/PG_VERSION" ]; then
    as_pg "$bin/pg_ctl" -D "$STATE/postgres" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

down() {
  [ -d "$STATE" ] || return 0
  prepare_state
  # the users of a store first, then the stores; each group at once
  stop_pid mlflow group & stop_pid slurmd & stop_pid slurmctld & wait
  stop_postgres & stop_pid slurmdbd & wait
  stop_pid mariadb & stop_pid munged & wait
  say "stopped (state kept in $STATE)"
}

print_env() {
  echo "export SLURM_CONF=$SLURM_CONF"
  echo "export PIPELINE_CLUSTER_PARTITION=$PARTITION"
  echo "export PIPELINE_CLUSTER_TRACKING_URI=$TRACKING_URI"
}

up() {
  install_packages
  prepare_state
  start_munge
  start_mariadb
  start_slurm
  start_postgres
  start_mlflow
  print_env >"$STATE/cluster.env"
  say "up: partition $PARTITION, tracking URI $TRACKING_URI (state in $STATE)"
  cat <<EOF
partition     $PARTITION
tracking URI  $TRACKING_URI
SLURM_CONF    $SLURM_CONF   (export it, or: source $STATE/cluster.env)
try:          python -m pipeline -m hydra/launcher=slurm hydra.launcher.partition=$PARTITION \\
                hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=1 tracking.uri=$TRACKING_URI \\
                runtime.device=cpu generation.temperature=0,0.7,1.0
EOF
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  purge) down; rm -rf "$STATE"; say "removed $STATE" ;;
  env) prepare_state; print_env ;;
  *) echo "usage: $0 up|down|purge|env   (state in \$PIPELINE_CLUSTER_DIR, default /tmp/pipeline-cluster-\$UID)" >&2
     exit 2 ;;
esac
