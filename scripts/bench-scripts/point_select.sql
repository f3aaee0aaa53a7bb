\set id random(1, 10000)
SELECT v FROM kv WHERE id = :id;
