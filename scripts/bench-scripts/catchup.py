#!/usr/bin/env python3
"""Times one catch-up for scripts/bench seeding: runs `ALTER DATABASE app
SET HADR RESUME` on the primary and waits until every given secondary's
own view (sys.dm_hadr_database_replica_states, is_local) shows
last_redone_lsn at or past --target. Prints the seconds from the
statement's start to the poll that saw the last secondary there.

The connections are opened before the statement and kept, and the
secondaries are polled one after the other every --poll seconds: the
time measured is the catch-up's, not a client's start-up (a psql per poll
added 30-60 ms to a catch-up of 0.4 s). Polling itself costs the
secondaries some CPU (each query builds the view): in a profile of a
catch-up polled every 0.02 s (the default), building the view took about
5 % of the nodes' samples.

Exit status 1, with the last positions seen on stderr, when the
secondaries have not redone the target within --limit seconds.
"""

import argparse
import sys
import time

import psycopg

REDONE = (
    "SELECT last_redone_lsn FROM sys.dm_hadr_database_replica_states "
    "WHERE database_name = %s AND is_local"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--primary", required=True, help="conninfo of the primary")
    ap.add_argument("--secondary", action="append", required=True, help="conninfo of a secondary (repeat)")
    ap.add_argument("--database", default="app")
    ap.add_argument("--target", type=int, required=True, help="the LSN every secondary must have redone")
    ap.add_argument("--limit", type=float, default=120.0)
    ap.add_argument("--poll", type=float, default=0.02)
    args = ap.parse_args()
    primary = psycopg.connect(args.primary, autocommit=True)
    secondaries = [psycopg.connect(c, autocommit=True) for c in args.secondary]
    seen = [None] * len(secondaries)
    start = time.monotonic()
    primary.execute(f"ALTER DATABASE {args.database} SET HADR RESUME")
    while time.monotonic() - start < args.limit:
        for i, conn in enumerate(secondaries):
            if seen[i] is None or seen[i] < args.target:
                seen[i] = conn.execute(REDONE, (args.database,)).fetchone()[0]
        if all(s is not None and s >= args.target for s in seen):
            print(f"{time.monotonic() - start:.3f}")
            return 0
        time.sleep(args.poll)
    print(f"catchup.py: not every secondary redid LSN {args.target} within {args.limit} s: {seen}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
