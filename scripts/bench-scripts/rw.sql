\set a random(1, 10000)
\set b random(1, 10000)
\set delta random(-5000, 5000)
BEGIN;
UPDATE rw_account SET balance = balance + :delta WHERE id = :a;
SELECT balance FROM rw_account WHERE id = :a;
SELECT balance FROM rw_account WHERE id = :b;
INSERT INTO rw_history (client, id, delta) VALUES (:client_id, :a, :delta);
COMMIT;
