#!/usr/bin/env bash
# Stops what start.sh and the upgrade started (their pids are in ./demo/).
cd "$(dirname "$0")"
for name in tm v1 v2 v1-dr v2-dr stage production production-dr stage-dr; do
  [ -f "demo/$name.pid" ] && kill "$(cat "demo/$name.pid")" 2>/dev/null
done
true
