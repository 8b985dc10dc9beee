-- report_site_measurement_daily weighted each window's mean by its count in double precision:
-- a day whose windows together pass about 1.8e308 (each window's own figures finite and valid)
-- failed the whole query with "value out of range: overflow". The weighting is now numeric,
-- which holds any double exactly; the mean comes back as double precision, as before.

CREATE OR REPLACE VIEW report_site_measurement_daily AS
SELECT
    s.site_id,
    (s.window_start AT TIME ZONE coalesce(st.timezone, 'UTC'))::date AS local_day,
    m.key AS measurement,
    sum((m.value ->> 'count')::bigint) AS sample_count,
    min((m.value ->> 'min')::double precision) AS min_value,
    max((m.value ->> 'max')::double precision) AS max_value,
    (sum((m.value ->> 'avg')::numeric * (m.value ->> 'count')::bigint)
        / nullif(sum((m.value ->> 'count')::bigint), 0))::double precision AS avg_value
FROM site_window_stats s
LEFT JOIN sites st ON st.site_id = s.site_id
CROSS JOIN LATERAL jsonb_each(s.measurements) AS m(key, value)
GROUP BY s.site_id, (s.window_start AT TIME ZONE coalesce(st.timezone, 'UTC'))::date, m.key;
