-- report_device_health counted its 24-hour columns over the windows that *started* in the last 24 hours, so the
-- window holding the 24-hour mark was left out whole: a critical event 23h58m ago in a window that started 24h01m
-- ago did not make the device critical, and with SLUICE_ENRICH_WINDOW_SECONDS up to 86400 the blind spot was up to a
-- day wide. The 24-hour columns now count the windows holding an event of the last 24 hours (last_event_time within
-- them): every window starting in them, and the one holding the mark when any of its events is after it. That
-- window counts whole, so events_24h and critical_24h may include events up to one window older than 24 hours (the
-- figures are per window; counting the exact events would read enriched_events, a day of every device's events at
-- the widest windows): a critical event of the last 24 hours is never missed, and active_windows_24h is exact.
-- Windows never overlap, so only the device's newest window starting at or before the mark can hold it: one more
-- probe of device_window_stats_device (device_id, window_start) per device. Rows, columns and types are unchanged.

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
CROSS JOIN LATERAL (SELECT sum(w.event_count)::bigint AS events_24h, sum(w.critical_count)::bigint AS critical_24h,
                           count(*) AS active_windows_24h
                    FROM (SELECT d.event_count, d.critical_count FROM device_window_stats d
                          WHERE d.device_id = t.device_id AND d.window_start > now() - interval '24 hours'
                          UNION ALL
                          SELECT m.event_count, m.critical_count
                          FROM (SELECT d.event_count, d.critical_count, d.last_event_time FROM device_window_stats d
                                WHERE d.device_id = t.device_id AND d.window_start <= now() - interval '24 hours'
                                ORDER BY d.window_start DESC LIMIT 1) AS m
                          WHERE m.last_event_time >= now() - interval '24 hours') AS w) AS recent
LEFT JOIN devices ref ON ref.device_id = t.device_id
WHERE t.windows > 0;

COMMENT ON COLUMN report_device_health.events_24h IS 'Events of the windows holding an event of the last 24 hours (the window holding the 24-hour mark counts whole: up to one window older).';
COMMENT ON COLUMN report_device_health.critical_24h IS 'Critical events of the windows holding an event of the last 24 hours (the window holding the 24-hour mark counts whole: up to one window older).';
COMMENT ON COLUMN report_device_health.active_windows_24h IS 'Windows with events in the last 24 hours.';
COMMENT ON COLUMN report_device_health.health IS 'silent (no event for 1 hour), critical (a critical event in the last 24 hours, or earlier in the window holding the 24-hour mark) or ok.';
