\set n random(1, 10000)
INSERT INTO kv_insert (client, v) VALUES (:client_id, :n);
