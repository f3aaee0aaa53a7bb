#!/usr/bin/env bash
# Starts everything the walk-through needs on this machine, in ./demo/:
#   production: `availdb up --replicas 2 --port 5432` (listener 5432, r1 5434, r2 5435), server 'A'
#   stage:      one `availdb server` on 6434 (endpoint 6500) with an empty group, server 'S'
#   V1:         app.py --version 1 on 8101, against production's listener
#   traffic manager: clients use 127.0.0.1:8000, admin API on 8001
# Needs `availdb` on PATH (cargo install --path ../.. or target/release),
# psql, and python3 with psycopg. stop.sh stops it all.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p demo
AVAILDB=${AVAILDB:-availdb}
sql() { psql -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$1 user=availdb dbname=$2" -c "$3"; }
retry() { for _ in $(seq 50); do "$@" 2>/dev/null && return 0; sleep 0.2; done; "$@"; }

"$AVAILDB" up --replicas 2 --port 5432 --data-dir demo/production > demo/production.out 2>&1 &
echo $! > demo/production.pid
"$AVAILDB" server --data-dir demo/stage --port 6434 --name s1 --endpoint 127.0.0.1:6500 > demo/stage.log 2>&1 &
echo $! > demo/stage.pid
# `availdb up` prints the listener's URL once the group serves.
for _ in $(seq 300); do grep -q "listener (read-write)" demo/production.out && break; sleep 0.2; done
retry sql 5434 availdb "ALTER CLUSTER SET (SERVER_NAME = 'A')"
retry sql 6434 availdb "CREATE AVAILABILITY GROUP stage FOR REPLICA ON 's1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:6500', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL)"
retry sql 6434 availdb "ALTER CLUSTER SET (SERVER_NAME = 'S')"
psql -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=5432 user=availdb dbname=app" -f schema_v1.sql
python3 app.py --version 1 --port 8101 --dsn postgresql://availdb@127.0.0.1:5432/app --pid-file demo/v1.pid > demo/v1.log 2>&1 &
"$AVAILDB" traffic-manager --config tm.toml --port 8000 --admin-port 8001 > demo/tm.log 2>&1 &
echo $! > demo/tm.pid
for _ in $(seq 100); do curl -fsS http://127.0.0.1:8000/ >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS http://127.0.0.1:8000/
echo "ready: the application is at http://127.0.0.1:8000/ (traffic manager admin: 127.0.0.1:8001)"
