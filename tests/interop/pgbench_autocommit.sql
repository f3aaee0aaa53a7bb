-- The same bump as pgbench_counter.sql without a transaction block: two
-- autocommit statements. The invariants of that script still hold.
\set id random(1, 100)
UPDATE counters SET hits = hits + 1 WHERE id = :id;
INSERT INTO events(counter_id) VALUES (:id);
