-- psql round trip in plain SQL (no backslash commands): DDL, DML whose
-- command tags psql prints, and a SELECT it formats as a table.
CREATE TABLE fruit(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL);
INSERT INTO fruit(name, price) VALUES ('apple', 1.25), ('pear', 2.5), ('plum', 0.75);
UPDATE fruit SET price = price * 2 WHERE price < 2;
DELETE FROM fruit WHERE name = 'pear';
SELECT name, price FROM fruit ORDER BY id;
