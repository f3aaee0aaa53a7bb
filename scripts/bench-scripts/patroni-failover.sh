#!/usr/bin/env bash
# The failover scenario's PostgreSQL comparison: three PostgreSQL 15 nodes
# under Patroni with one etcd, all on 127.0.0.1, with Patroni's default
# timing (ttl 30 s, loop_wait 10 s, retry_timeout 10 s) and its default
# asynchronous replication (PATRONI_SYNCHRONOUS_MODE=true turns on
# synchronous_mode; in a trial run here it stalled on the second failover,
# not investigated). Each trial kills the primary's Patroni and postmaster
# with SIGKILL (a crashed node) and times the first commit through a
# multi-host connection string with target_session_attrs=read-write
# (failover.py --patroni), then restarts the node's Patroni, which rejoins it
# (pg_rewind).
#
#   patroni-failover.sh WORK_DIR TRIALS OUT_JSON
#
# Needs Debian's patroni, etcd-server and postgresql-15 packages (installed
# here with apt-get when missing). Every process it starts is stopped on
# exit, by pid; every wait is bounded.
set -euo pipefail

work=$1 trials=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v patroni >/dev/null || ! command -v etcd >/dev/null || [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  echo "patroni-failover: installing patroni, etcd-server and postgresql-15 (apt-get)" >&2
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
  fi
  apt-get install -y -qq patroni etcd-server postgresql-15 >/dev/null
fi

mkdir -p "$work"
chown postgres: "$work"
pids=()    # etcd and the first Patroni of each node (runuser)
configs=()
# ours SIGNAL: signals every process this script started, by pid: etcd, each
# node's runuser and Patroni (found by its own config file's path in
# /proc/*/cmdline) and each node's postmaster (its postmaster.pid).
ours() {
  local sig=$1 pid c
  for pid in "${pids[@]}"; do kill "-$sig" "$pid" 2>/dev/null || true; done
  for c in "${configs[@]}"; do
    for pid in $(grep -lzx -- "$c" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
      kill "-$sig" "$pid" 2>/dev/null || true
    done
    pid=$(head -n 1 "${c%.yml}/postmaster.pid" 2>/dev/null) || true
    [ -z "$pid" ] || kill "-$sig" "$pid" 2>/dev/null || true
  done
}
cleanup() {
  ours TERM
  for _ in $(seq 1 100); do
    sleep 0.1
    [ -n "$(for c in "${configs[@]}"; do grep -lzx -- "$c" /proc/[0-9]*/cmdline 2>/dev/null; done)" ] || break
  done
  ours KILL
}
trap cleanup EXIT

port=$(python3 - <<'PY'
import random, socket
for _ in range(200):
    p = random.randint(20000, 59000)
    try:
        for o in (0, 1, 10, 11, 12, 20, 21, 22):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + o))
    except OSError:
        continue
    print(p)
    break
PY
)
etcd_client=$port etcd_peer=$((port + 1))
runuser -u postgres -- etcd --name e1 --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "e1=http://127.0.0.1:$etcd_peer" --enable-v2=true >"$work/etcd.log" 2>&1 &
pids+=($!)

names=() pgports=()
for i in 1 2 3; do
  name=pg$i pg=$((port + 9 + i)) api=$((port + 19 + i))
  names+=("$name") pgports+=("$pg")
  cat >"$work/$name.yml" <<EOF
scope: bench
name: $name
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$api
  connect_address: 127.0.0.1:$api
etcd:
  host: 127.0.0.1:$etcd_client
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    synchronous_mode: ${PATRONI_SYNCHRONOUS_MODE:-false}
    postgresql:
      use_pg_rewind: true
      parameters:
        synchronous_commit: "on"
        wal_log_hints: "on"
  initdb:
    - encoding: UTF8
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$pg
  connect_address: 127.0.0.1:$pg
  data_dir: $work/$name
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: $work/$name.pgpass
  authentication:
    replication:
      username: replicator
      password: rep
    superuser:
      username: postgres
      password: pg
    rewind:
      username: postgres
      password: pg
  parameters:
    unix_socket_directories: $work
EOF
  chown postgres: "$work/$name.yml"
  configs+=("$work/$name.yml")
done

for i in 0 1 2; do
  runuser -u postgres -- patroni "${configs[$i]}" >>"$work/${names[$i]}.log" 2>&1 &
  pids+=($!)
  [ "$i" != 0 ] || sleep 5 # let pg1 bootstrap the cluster first
done

python3 "$here/failover.py" --patroni \
  --names "$(IFS=,; echo "${names[*]}")" --ports "$(IFS=,; echo "${pgports[*]}")" \
  --patroni-configs "$(IFS=,; echo "${configs[*]}")" --data-dir "$work" \
  --kills "$trials" --planned 0 --pidfile "$work/restarted.pids" --out "$out" --timeout 120

