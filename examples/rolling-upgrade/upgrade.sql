-- V1 → V2: every item gets a category. availdb runs this file on the
-- stage copy as one transaction (production stays read-only meanwhile).
ALTER TABLE items ADD COLUMN category TEXT NOT NULL DEFAULT 'general';
CREATE INDEX items_category ON items(category);
UPDATE schema_version SET version = 2;
