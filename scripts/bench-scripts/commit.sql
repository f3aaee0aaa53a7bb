\set n random(1, 10000)
INSERT INTO commit_insert (client, v) VALUES (:client_id, :n);
