-- Reporting views for BI tools (Power BI, Grafana, Metabase): stable names and
-- columns over the enrichment tables; each column is explained by a COMMENT.

CREATE VIEW report_site_daily AS
SELECT
    s.site_id,
    coalesce(max(st.name), max(s.site_name)) AS site_name,
    coalesce(max(st.region), max(s.region)) AS region,
    coalesce(st.timezone, 'UTC') AS timezone,
    (s.window_start AT TIME ZONE coalesce(st.timezone, 'UTC'))::date AS local_day,
    sum(s.event_count)::bigint AS event_count,
    sum(s.critical_count)::bigint AS critical_count,
    round(sum(s.critical_count)::numeric / nullif(sum(s.event_count), 0), 4) AS critical_ratio,
    max(s.device_count) AS peak_active_devices,
    count(*) AS active_windows,
    min(s.window_start) AS first_window_start,
    max(s.window_end) AS last_window_end
FROM site_window_stats s
LEFT JOIN sites st ON st.site_id = s.site_id
GROUP BY s.site_id, coalesce(st.timezone, 'UTC'),
         (s.window_start AT TIME ZONE coalesce(st.timezone, 'UTC'))::date;

COMMENT ON VIEW report_site_daily IS 'Daily summary per site, days in the site''s local time zone (UTC when unknown).';
COMMENT ON COLUMN report_site_daily.site_id IS 'Site.';
COMMENT ON COLUMN report_site_daily.site_name IS 'Site name from the current reference data (as enriched when the site is no longer listed).';
COMMENT ON COLUMN report_site_daily.region IS 'Site region from the current reference data (as enriched when the site is no longer listed).';
COMMENT ON COLUMN report_site_daily.timezone IS 'Time zone used to cut local days.';
COMMENT ON COLUMN report_site_daily.local_day IS 'Local calendar day of the windows (by window start).';
COMMENT ON COLUMN report_site_daily.event_count IS 'Events of the site on that day.';
COMMENT ON COLUMN report_site_daily.critical_count IS 'Critical events of the site on that day.';
COMMENT ON COLUMN report_site_daily.critical_ratio IS 'critical_count / event_count (0 to 1, 4 decimals).';
COMMENT ON COLUMN report_site_daily.peak_active_devices IS 'Largest number of devices sending in one window that day.';
COMMENT ON COLUMN report_site_daily.active_windows IS 'Windows of that day in which the site sent events.';
COMMENT ON COLUMN report_site_daily.first_window_start IS 'Start of the first window with events (UTC).';
COMMENT ON COLUMN report_site_daily.last_window_end IS 'End of the last window with events (UTC).';

CREATE VIEW report_site_measurement_daily AS
SELECT
    s.site_id,
    (s.window_start AT TIME ZONE coalesce(st.timezone, 'UTC'))::date AS local_day,
    m.key AS measurement,
    sum((m.value ->> 'count')::bigint) AS sample_count,
    min((m.value ->> 'min')::double precision) AS min_value,
    max((m.value ->> 'max')::double precision) AS max_value,
    sum((m.value ->> 'avg')::double precision * (m.value ->> 'count')::bigint)
        / nullif(sum((m.value ->> 'count')::bigint), 0) AS avg_value
FROM site_window_stats s
LEFT JOIN sites st ON st.site_id = s.site_id
CROSS JOIN LATERAL jsonb_each(s.measurements) AS m(key, value)
GROUP BY s.site_id, (s.window_start AT TIME ZONE coalesce(st.timezone, 'UTC'))::date, m.key;

COMMENT ON VIEW report_site_measurement_daily IS 'Daily per site per measurement figures (site local days).';
COMMENT ON COLUMN report_site_measurement_daily.site_id IS 'Site.';
COMMENT ON COLUMN report_site_measurement_daily.local_day IS 'Local calendar day (by window start).';
COMMENT ON COLUMN report_site_measurement_daily.measurement IS 'Measurement name as sent by devices.';
COMMENT ON COLUMN report_site_measurement_daily.sample_count IS 'Number of values of the measurement that day.';
COMMENT ON COLUMN report_site_measurement_daily.min_value IS 'Smallest value that day.';
COMMENT ON COLUMN report_site_measurement_daily.max_value IS 'Largest value that day.';
COMMENT ON COLUMN report_site_measurement_daily.avg_value IS 'Mean of every value that day (windows weighted by their sample counts).';

CREATE VIEW report_device_health AS
SELECT
    d.device_id,
    bool_or(d.known_device) AS known_device,
    (array_agg(d.site_id ORDER BY d.window_start DESC))[1] AS site_id,
    ref.model,
    ref.firmware,
    max(d.last_event_time) AS last_seen,
    sum(d.event_count) FILTER (WHERE d.window_start >= now() - interval '24 hours')::bigint AS events_24h,
    sum(d.critical_count) FILTER (WHERE d.window_start >= now() - interval '24 hours')::bigint AS critical_24h,
    count(*) FILTER (WHERE d.window_start >= now() - interval '24 hours') AS active_windows_24h,
    sum(d.event_count)::bigint AS events_total,
    sum(d.critical_count)::bigint AS critical_total,
    CASE
        WHEN max(d.last_event_time) < now() - interval '1 hour' THEN 'silent'
        WHEN coalesce(sum(d.critical_count) FILTER (WHERE d.window_start >= now() - interval '24 hours'), 0) > 0 THEN 'critical'
        ELSE 'ok'
    END AS health
FROM device_window_stats d
LEFT JOIN devices ref ON ref.device_id = d.device_id
GROUP BY d.device_id, ref.model, ref.firmware;

COMMENT ON VIEW report_device_health IS 'One row per device that ever sent events: activity, critical events and a coarse health status.';
COMMENT ON COLUMN report_device_health.device_id IS 'Device.';
COMMENT ON COLUMN report_device_health.known_device IS 'True when the device had a reference row in at least one enriched window.';
COMMENT ON COLUMN report_device_health.site_id IS 'Site of the device in its latest enriched window.';
COMMENT ON COLUMN report_device_health.model IS 'Model from the current reference data.';
COMMENT ON COLUMN report_device_health.firmware IS 'Firmware from the current reference data.';
COMMENT ON COLUMN report_device_health.last_seen IS 'Latest event_time enriched for the device (UTC).';
COMMENT ON COLUMN report_device_health.events_24h IS 'Events in windows that started in the last 24 hours.';
COMMENT ON COLUMN report_device_health.critical_24h IS 'Critical events in windows that started in the last 24 hours.';
COMMENT ON COLUMN report_device_health.active_windows_24h IS 'Windows with events in the last 24 hours.';
COMMENT ON COLUMN report_device_health.events_total IS 'Every enriched event of the device.';
COMMENT ON COLUMN report_device_health.critical_total IS 'Every enriched critical event of the device.';
COMMENT ON COLUMN report_device_health.health IS 'silent (no event for 1 hour), critical (a critical event in 24 hours) or ok.';

CREATE VIEW report_unknown_devices AS
SELECT
    d.device_id,
    sum(d.event_count)::bigint AS event_count,
    min(d.first_event_time) AS first_seen,
    max(d.last_event_time) AS last_seen,
    count(*) AS windows,
    EXISTS (SELECT 1 FROM devices ref WHERE ref.device_id = d.device_id) AS now_known
FROM device_window_stats d
WHERE NOT d.known_device
GROUP BY d.device_id;

COMMENT ON VIEW report_unknown_devices IS 'Devices whose events were enriched without a reference row (add them to the devices data, then backfill).';
COMMENT ON COLUMN report_unknown_devices.device_id IS 'Device that had no reference row.';
COMMENT ON COLUMN report_unknown_devices.event_count IS 'Events enriched without reference data.';
COMMENT ON COLUMN report_unknown_devices.first_seen IS 'Earliest such event (UTC).';
COMMENT ON COLUMN report_unknown_devices.last_seen IS 'Latest such event (UTC).';
COMMENT ON COLUMN report_unknown_devices.windows IS 'Windows in which it was unknown.';
COMMENT ON COLUMN report_unknown_devices.now_known IS 'True when the device has a reference row now (a backfill of those windows would fill the columns).';
