-- One pgbench transaction: bump a random counter, log the bump, read it back.
-- After N transactions sum(counters.hits) = count(events) = N, and every
-- counter's hits equal its number of events.
\set id random(1, 100)
BEGIN;
UPDATE counters SET hits = hits + 1 WHERE id = :id;
INSERT INTO events(counter_id) VALUES (:id);
SELECT hits FROM counters WHERE id = :id;
END;
