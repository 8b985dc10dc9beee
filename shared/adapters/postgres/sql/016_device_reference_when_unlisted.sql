-- report_device_health took model and firmware, and report_unknown_devices.now_known whether a device is listed,
-- from the devices table only, which only `reference load` fills: with SLUICE_ENRICH_REFERENCE_SOURCE=parquet (the
-- reference data in blobs only) every device showed NULL model and firmware although its enriched rows held them,
-- and a device added to the devices blob stayed now_known = false for good, so `sluice enrich unknown-devices` never
-- said to backfill it. As the site columns do (006, 008), a device devices does not list now shows the model and
-- firmware of its latest window enriched with a reference row (an event of that window in enriched_events: every
-- event of a device in one window was enriched with the same reference row), and an unknown device is now_known
-- too when a window after its last unknown one was enriched with a reference row for it.
--
-- Cost: a device devices lists costs nothing more. Another one costs a probe of device_window_stats_device
-- (device_id, window_start) backwards to its newest known window (past its unknown windows after it, if any), and
-- one of enriched_events_device_time (device_id, event_time) at that window's last event; a device never known
-- (device_totals.known_windows = 0) skips both. now_known costs one probe of device_window_stats_device per device
-- devices does not list: the first window after the device's last unknown one is a known one.

CREATE OR REPLACE VIEW report_device_health AS
SELECT
    t.device_id,
    t.known_windows > 0 AS known_device,
    newest.site_id,
    CASE WHEN ref.device_id IS NOT NULL THEN ref.model ELSE enriched.model END AS model,
    CASE WHEN ref.device_id IS NOT NULL THEN ref.firmware ELSE enriched.firmware END AS firmware,
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
LEFT JOIN LATERAL (SELECT e.model, e.firmware
                   FROM (SELECT d.window_start, d.last_event_time FROM device_window_stats d
                         WHERE d.device_id = t.device_id AND d.known_device
                           AND ref.device_id IS NULL AND t.known_windows > 0
                         ORDER BY d.window_start DESC LIMIT 1) AS known
                   CROSS JOIN LATERAL (SELECT e.model, e.firmware FROM enriched_events e
                                       WHERE e.device_id = t.device_id AND e.known_device
                                         AND e.event_time >= known.window_start
                                         AND e.event_time <= known.last_event_time
                                       ORDER BY e.event_time DESC LIMIT 1) AS e) AS enriched ON true
WHERE t.windows > 0;

COMMENT ON COLUMN report_device_health.model IS 'Model from the current reference data (when the device is not listed in devices: its model in its latest window enriched with a reference row).';
COMMENT ON COLUMN report_device_health.firmware IS 'Firmware from the current reference data (when the device is not listed in devices: its firmware in its latest window enriched with a reference row).';

CREATE OR REPLACE VIEW report_unknown_devices AS
SELECT
    d.device_id,
    sum(d.event_count)::bigint AS event_count,
    min(d.first_event_time) AS first_seen,
    max(d.last_event_time) AS last_seen,
    count(*) AS windows,
    EXISTS (SELECT 1 FROM devices ref WHERE ref.device_id = d.device_id)
        OR EXISTS (SELECT 1 FROM device_window_stats k
                   WHERE k.device_id = d.device_id AND k.window_start > max(d.window_start) AND k.known_device)
        AS now_known
FROM device_window_stats d
WHERE NOT d.known_device
GROUP BY d.device_id;

COMMENT ON COLUMN report_unknown_devices.now_known IS 'True when the device has a reference row now: listed in devices, or a window after its last unknown one was enriched with a reference row for it (a backfill of those windows would fill the columns).';
