-- Run with ON_ERROR_STOP=1: the duplicate key stops the script, so psql
-- exits with status 3 and the last INSERT never runs.
CREATE TABLE ledger(id INTEGER PRIMARY KEY, note TEXT);
INSERT INTO ledger VALUES (1, 'first');
INSERT INTO ledger VALUES (1, 'duplicate');
INSERT INTO ledger VALUES (2, 'never reached');
