-- When each late hour was first noted since its last refresh. The late-data
-- refresher waits for an hour to settle (no row noted in it for
-- --late-settle) before it refreshes it, so that a backfill re-materialises
-- each bucket once, not once per round while rows keep landing in it; an
-- hour noted again and again is refreshed anyway once it has waited ten
-- settle periods since this (src/maintain/refresh.rs).
ALTER TABLE late_hours ADD COLUMN first_noted_at timestamptz NOT NULL DEFAULT now();
