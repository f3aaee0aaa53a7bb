-- Tables of the rw scenario (a small read-write transaction, rw.sql), on
-- every system it runs against; plain SQL both SQLite and PostgreSQL accept.
-- Every account starts at 0 and every update is logged in rw_history, so on
-- every replica sum(balance) = sum(delta) and rw_history has one row per
-- committed transaction.
CREATE TABLE rw_account (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE rw_history (client INTEGER NOT NULL, id INTEGER NOT NULL, delta INTEGER NOT NULL);
WITH RECURSIVE seq (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 10000)
INSERT INTO rw_account (id, balance) SELECT i, 0 FROM seq;
