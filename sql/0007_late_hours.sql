-- Hours that received late rows and whose aggregates still need a refresh
-- (src/maintain/refresh.rs). Kept in the database, not in each instance's
-- memory, so that several instances merge their hours into one refresh
-- round run by whichever holds the refresh lock, and so that hours noted
-- just before a crash are still refreshed by the next instance to run.
CREATE TABLE late_hours (
    table_name text        NOT NULL,
    hour       timestamptz NOT NULL,
    -- When the hour was last noted. A round deletes only the hours noted
    -- before it read them: a note that arrives while its hour is being
    -- refreshed may hold rows the refresh did not see, so it stays.
    noted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, hour)
);
