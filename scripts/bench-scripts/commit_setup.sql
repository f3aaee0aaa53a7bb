-- Table of the commit scenario, created on every system it runs against
-- (availdb: database app, on r1 of a group, from where it replicates;
-- PostgreSQL: database postgres). Append-only, without a key, like kv_insert.
CREATE TABLE commit_insert (client INTEGER NOT NULL, v TEXT NOT NULL);
