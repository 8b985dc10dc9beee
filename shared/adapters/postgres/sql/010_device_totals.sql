-- report_device_health aggregated every window of every device on each read: its cost grew with the history, and at
-- 100 devices with five-minute windows a million rows (35 days) took about 0.8 s, so a fleet of 1,000 devices would
-- pass the HTTP API's 2 s statement timeout within about 8 days, and GET /api/reports/devices would answer 503 for
-- good. The all-time columns now come from device_totals, one row per device kept exact by statement triggers on
-- device_window_stats in the transaction of every change; the rest is read per device through the index
-- device_window_stats_device (device_id, window_start): its newest window and its windows of the last 24 hours.
-- The report keeps its rows, columns, types and values.

CREATE TABLE device_totals (
    device_id      text PRIMARY KEY,
    windows        bigint NOT NULL,
    known_windows  bigint NOT NULL,
    events_total   bigint NOT NULL,
    critical_total bigint NOT NULL
);

COMMENT ON TABLE device_totals IS 'Per device totals over all its rows of device_window_stats, kept exact by that table''s statement triggers in the same transaction as each change (a device whose windows are all deleted keeps a row of zeros).';
COMMENT ON COLUMN device_totals.device_id IS 'Device.';
COMMENT ON COLUMN device_totals.windows IS 'Rows of the device in device_window_stats (windows in which it sent events).';
COMMENT ON COLUMN device_totals.known_windows IS 'How many of them were enriched with a reference row for the device (known_device).';
COMMENT ON COLUMN device_totals.events_total IS 'Sum of their event_count.';
COMMENT ON COLUMN device_totals.critical_total IS 'Sum of their critical_count.';

-- Each trigger adds the per-device deltas of its statement (rows in: +, rows out: -; an UPDATE, including the
-- DO UPDATE of an upsert, both) with one upsert taking the rows in device_id order, so two writers changing the same
-- devices lock them in the same order and never deadlock. PostgreSQL allows transition tables only on triggers of
-- one event: one trigger per event, one function for all three.
CREATE FUNCTION device_totals_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO device_totals AS t (device_id, windows, known_windows, events_total, critical_total)
        SELECT device_id, count(*), count(*) FILTER (WHERE known_device), sum(event_count), sum(critical_count)
        FROM new_rows GROUP BY device_id ORDER BY device_id
        ON CONFLICT (device_id) DO UPDATE SET
            windows = t.windows + EXCLUDED.windows, known_windows = t.known_windows + EXCLUDED.known_windows,
            events_total = t.events_total + EXCLUDED.events_total,
            critical_total = t.critical_total + EXCLUDED.critical_total;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO device_totals AS t (device_id, windows, known_windows, events_total, critical_total)
        SELECT device_id, -count(*), -count(*) FILTER (WHERE known_device), -sum(event_count), -sum(critical_count)
        FROM old_rows GROUP BY device_id ORDER BY device_id
        ON CONFLICT (device_id) DO UPDATE SET
            windows = t.windows + EXCLUDED.windows, known_windows = t.known_windows + EXCLUDED.known_windows,
            events_total = t.events_total + EXCLUDED.events_total,
            critical_total = t.critical_total + EXCLUDED.critical_total;
    ELSE
        INSERT INTO device_totals AS t (device_id, windows, known_windows, events_total, critical_total)
        SELECT device_id, sum(windows), sum(known_windows), sum(events), sum(critical)
        FROM (SELECT device_id, 1 AS windows, known_device::int AS known_windows, event_count AS events,
                     critical_count AS critical FROM new_rows
              UNION ALL
              SELECT device_id, -1, -known_device::int, -event_count, -critical_count FROM old_rows) AS delta
        GROUP BY device_id
        HAVING sum(known_windows) <> 0 OR sum(events) <> 0 OR sum(critical) <> 0 OR sum(windows) <> 0
        ORDER BY device_id
        ON CONFLICT (device_id) DO UPDATE SET
            windows = t.windows + EXCLUDED.windows, known_windows = t.known_windows + EXCLUDED.known_windows,
            events_total = t.events_total + EXCLUDED.events_total,
            critical_total = t.critical_total + EXCLUDED.critical_total;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION device_totals_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE device_totals;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION device_totals_apply() IS 'Statement trigger of device_window_stats: adds the per-device deltas of the statement''s transition tables to device_totals.';
COMMENT ON FUNCTION device_totals_clear() IS 'Statement trigger of device_window_stats: a TRUNCATE of it empties device_totals.';

-- The triggers first: CREATE TRIGGER locks device_window_stats against writes until this migration commits, so the
-- backfill below reads every row committed before it and no write can fall between the two.
CREATE TRIGGER device_totals_insert AFTER INSERT ON device_window_stats
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION device_totals_apply();
CREATE TRIGGER device_totals_update AFTER UPDATE ON device_window_stats
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION device_totals_apply();
CREATE TRIGGER device_totals_delete AFTER DELETE ON device_window_stats
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION device_totals_apply();
CREATE TRIGGER device_totals_truncate AFTER TRUNCATE ON device_window_stats
    FOR EACH STATEMENT EXECUTE FUNCTION device_totals_clear();

INSERT INTO device_totals (device_id, windows, known_windows, events_total, critical_total)
SELECT device_id, count(*), count(*) FILTER (WHERE known_device), sum(event_count), sum(critical_count)
FROM device_window_stats GROUP BY device_id;

-- last_seen is the last event time of the device's newest window, not a max over all of them: windows partition
-- event time. A window's rows hold only events with window_start <= event_time < window_end (the reader reads that
-- range, the enrichment accepts only events in it), and windows never overlap whatever width each was enriched
-- with (a window overlapping a ledger window other than itself is refused, and a width change starts the next
-- window where the enriched ones end), so every event of a later window is later than every event of an earlier
-- one. site_id was already the newest window's. known_device is true when any window was enriched with a
-- reference row. Each device costs two probes of device_window_stats_device, whatever its history.
CREATE OR REPLACE VIEW report_device_health AS
SELECT
    t.device_id,
    t.known_windows > 0 AS known_device,
    newest.site_id,
    ref.model,
    ref.firmware,
    newest.last_event_time AS last_seen,
    recent.events_24h,
    recent.critical_24h,
    recent.active_windows_24h,
    t.events_total,
    t.critical_total,
    CASE
        WHEN newest.last_event_time < now() - interval '1 hour' THEN 'silent'
        WHEN coalesce(recent.critical_24h, 0) > 0 THEN 'critical'
        ELSE 'ok'
    END AS health
FROM device_totals t
CROSS JOIN LATERAL (SELECT d.site_id, d.last_event_time FROM device_window_stats d
                    WHERE d.device_id = t.device_id ORDER BY d.window_start DESC LIMIT 1) AS newest
CROSS JOIN LATERAL (SELECT sum(d.event_count)::bigint AS events_24h, sum(d.critical_count)::bigint AS critical_24h,
                           count(*) AS active_windows_24h
                    FROM device_window_stats d
                    WHERE d.device_id = t.device_id AND d.window_start >= now() - interval '24 hours') AS recent
LEFT JOIN devices ref ON ref.device_id = t.device_id
WHERE t.windows > 0;
