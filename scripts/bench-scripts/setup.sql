-- Tables for scripts/bench. Plain SQL that SQLite and PostgreSQL both accept,
-- so both servers hold the same rows and run the same statements.
CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
-- Append-only target of the insert scenario, without a key like pgbench's own
-- pgbench_history: INTEGER PRIMARY KEY assigns ids in SQLite but not in PostgreSQL.
CREATE TABLE kv_insert (client INTEGER NOT NULL, v TEXT NOT NULL);
WITH RECURSIVE seq (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 10000)
INSERT INTO kv (id, v) SELECT i, 'value-' || i FROM seq;
