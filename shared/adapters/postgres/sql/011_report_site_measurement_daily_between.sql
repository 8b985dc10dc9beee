-- report_site_measurement_daily read every window of every site on each read, whatever the filter: its days are
-- cut in each site's zone, an expression no index serves (as report_site_daily's were, 009). It is also the wider
-- of the two, one row per site, day and measurement, expanding every window's measurements.
--
-- report_site_measurement_daily_between(first_day, last_day) is the same report for local days from first_day to
-- last_day (NULL: no bound), bounding window_start a day wider on each side than the days asked for (zone offsets
-- run from -12:00 to +14:00), which the primary key serves. The view is that function without bounds, one
-- definition for both; a SQL function of one SELECT is inlined, so a filter on the view plans as before.

CREATE FUNCTION report_site_measurement_daily_between(first_day date, last_day date)
RETURNS TABLE (site_id text, local_day date, measurement text, sample_count numeric, min_value double precision,
               max_value double precision, avg_value double precision)
LANGUAGE sql STABLE AS $$
SELECT
    s.site_id,
    (s.window_start AT TIME ZONE
        coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date,
    m.key,
    sum((m.value ->> 'count')::bigint),
    min((m.value ->> 'min')::double precision),
    max((m.value ->> 'max')::double precision),
    (sum((m.value ->> 'avg')::numeric * (m.value ->> 'count')::bigint)
        / nullif(sum((m.value ->> 'count')::bigint), 0))::double precision
FROM site_window_stats s
LEFT JOIN sites st ON st.site_id = s.site_id
CROSS JOIN LATERAL jsonb_each(s.measurements) AS m(key, value)
WHERE s.window_start >= coalesce((first_day - 1)::timestamp AT TIME ZONE 'UTC', '-infinity')
  AND s.window_start < coalesce((last_day + 2)::timestamp AT TIME ZONE 'UTC', 'infinity')
  AND (first_day IS NULL OR (s.window_start AT TIME ZONE
        coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date >= first_day)
  AND (last_day IS NULL OR (s.window_start AT TIME ZONE
        coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date <= last_day)
GROUP BY s.site_id,
         (s.window_start AT TIME ZONE
             coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date,
         m.key
$$;

COMMENT ON FUNCTION report_site_measurement_daily_between(date, date) IS 'report_site_measurement_daily for the local days first_day to last_day (NULL: no bound), reading only the windows that can fall on them.';

CREATE OR REPLACE VIEW report_site_measurement_daily AS
SELECT * FROM report_site_measurement_daily_between(NULL, NULL);
