#!/usr/bin/env bash
# Starts everything the walk-through needs on this machine, in ./demo/:
#   production: `availdb up --replicas 2 --port 5432` (listener 5432, r1 5434, r2 5435), server 'A'
#   stage:      one `availdb server` on 6434 (endpoint 6500) with an empty group, server 'S'
#   V1:         app.py --version 1 on 8101, against production's listener
#   traffic manager: clients use 127.0.0.1:8000, admin API on 8001
# With --geo (option 2, plan-geo.toml), the backup (DR) region as well:
#   production-DR: one `availdb server` on 7234 (endpoint 7300), server 'B', holding
#                  production's geo-secondary, and V1-DR on 8103 against it (an online backup)
#   stage-DR:      one `availdb server` on 7634 (endpoint 7700) with an empty group, server 'SB'
#   the traffic manager's profile is then tm-geo.toml (v1, and v1-dr as its backup)
# Needs `availdb` on PATH (cargo install --path ../.. or target/release),
# psql, and python3 with psycopg. stop.sh stops it all.
set -euo pipefail
cd "$(dirname "$0")"
GEO=false
[ "${1:-}" = "--geo" ] && GEO=true
mkdir -p demo
AVAILDB=${AVAILDB:-availdb}
sql() { psql -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$1 user=availdb dbname=$2" -c "$3"; }
retry() { for _ in $(seq 50); do "$@" 2>/dev/null && return 0; sleep 0.2; done; "$@"; }

"$AVAILDB" up --replicas 2 --port 5432 --data-dir demo/production > demo/production.out 2>&1 &
echo $! > demo/production.pid
# `availdb up` links its nodes over partner TLS with its own authority
# (demo/production/partner-ca): the other clusters' nodes get certificates
# from it too, so the geo-links between the clusters are TLS as well.
CA=demo/production/partner-ca
for _ in $(seq 300); do [ -f "$CA/ca.pem" ] && break; sleep 0.2; done
# server NAME PORT ENDPOINT_PORT DATA_DIR: one node of a cluster of its own.
server() {
  "$AVAILDB" cert issue --dir "$CA" --name "$1" --host 127.0.0.1 --out "demo/$4-tls" > /dev/null
  "$AVAILDB" server --data-dir "demo/$4" --port "$2" --name "$1" --endpoint "127.0.0.1:$3" \
    --partner-tls-cert "demo/$4-tls/$1.pem" --partner-tls-key "demo/$4-tls/$1.key" --partner-ca "$CA/ca.pem" \
    > "demo/$4.log" 2>&1 &
  echo $! > "demo/$4.pid"
}
server s1 6434 6500 stage
# `availdb up` prints the listener's URL once the group serves.
for _ in $(seq 300); do grep -q "listener (read-write)" demo/production.out && break; sleep 0.2; done
retry sql 5434 availdb "ALTER CLUSTER SET (SERVER_NAME = 'A')"
retry sql 6434 availdb "CREATE AVAILABILITY GROUP stage FOR REPLICA ON 's1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:6500', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL)"
retry sql 6434 availdb "ALTER CLUSTER SET (SERVER_NAME = 'S')"
psql -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=5432 user=availdb dbname=app" -f schema_v1.sql
python3 app.py --version 1 --port 8101 --dsn postgresql://availdb@127.0.0.1:5432/app --pid-file demo/v1.pid > demo/v1.log 2>&1 &
TM_CONFIG=tm.toml
if $GEO; then
  TM_CONFIG=tm-geo.toml
  server d1 7234 7300 production-dr
  server e1 7634 7700 stage-dr
  retry sql 7234 availdb "CREATE AVAILABILITY GROUP dr FOR REPLICA ON 'd1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7300', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL)"
  retry sql 7234 availdb "ALTER CLUSTER SET (SERVER_NAME = 'B')"
  retry sql 7634 availdb "CREATE AVAILABILITY GROUP stagedr FOR REPLICA ON 'e1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7700', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL)"
  retry sql 7634 availdb "ALTER CLUSTER SET (SERVER_NAME = 'SB')"
  # Production's DR slot: its geo-secondary in region B, V1 running against it.
  sql 5432 availdb "ALTER CLUSTER ADD PARTNER SERVER 'B' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7300')"
  sql 5432 availdb "ALTER DATABASE app ADD SECONDARY ON SERVER 'B'"
  python3 app.py --version 1 --port 8103 --dsn postgresql://availdb@127.0.0.1:7234/app --pid-file demo/v1-dr.pid > demo/v1-dr.log 2>&1 &
  for _ in $(seq 100); do curl -fsS http://127.0.0.1:8103/health >/dev/null 2>&1 && break; sleep 0.2; done
fi
"$AVAILDB" traffic-manager --config "$TM_CONFIG" --port 8000 --admin-port 8001 > demo/tm.log 2>&1 &
echo $! > demo/tm.pid
for _ in $(seq 100); do curl -fsS http://127.0.0.1:8000/ >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS http://127.0.0.1:8000/
echo "ready: the application is at http://127.0.0.1:8000/ (traffic manager admin: 127.0.0.1:8001)"
