-- report_site_daily_between grouped by each window's zone as well as by site and local day: for a site sites does
-- not list (the reference data in Parquet blobs), a day on which the site's zone changed came out as two rows of
-- that site and day, each with part of its events, while docs/reporting.md promises one row per site and local day
-- (and report_site_measurement_daily_between gives one). Each window's day is still cut in its own zone; the day's
-- row names the zone of its latest window.

CREATE OR REPLACE FUNCTION report_site_daily_between(first_day date, last_day date)
RETURNS TABLE (site_id text, site_name text, region text, timezone text, local_day date, event_count bigint,
               critical_count bigint, critical_ratio numeric, peak_active_devices integer, active_windows bigint,
               first_window_start timestamptz, last_window_end timestamptz)
LANGUAGE sql STABLE AS $$
SELECT
    s.site_id,
    CASE WHEN bool_or(st.site_id IS NOT NULL) THEN max(st.name)
         ELSE (SELECT l.site_name FROM site_window_stats l
               WHERE l.site_id = s.site_id AND l.site_name IS NOT NULL
               ORDER BY l.window_start DESC LIMIT 1) END,
    CASE WHEN bool_or(st.site_id IS NOT NULL) THEN max(st.region)
         ELSE (SELECT l.region FROM site_window_stats l
               WHERE l.site_id = s.site_id AND l.site_name IS NOT NULL
               ORDER BY l.window_start DESC LIMIT 1) END,
    (array_agg(coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC')
               ORDER BY s.window_start DESC))[1],
    (s.window_start AT TIME ZONE
        coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date,
    sum(s.event_count)::bigint,
    sum(s.critical_count)::bigint,
    round(sum(s.critical_count)::numeric / nullif(sum(s.event_count), 0), 4),
    max(s.device_count),
    count(*),
    min(s.window_start),
    max(s.window_end)
FROM site_window_stats s
LEFT JOIN sites st ON st.site_id = s.site_id
WHERE s.window_start >= coalesce((first_day - 1)::timestamp AT TIME ZONE 'UTC', '-infinity')
  AND s.window_start < coalesce((last_day + 2)::timestamp AT TIME ZONE 'UTC', 'infinity')
  AND (first_day IS NULL OR (s.window_start AT TIME ZONE
        coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date >= first_day)
  AND (last_day IS NULL OR (s.window_start AT TIME ZONE
        coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date <= last_day)
GROUP BY s.site_id,
         (s.window_start AT TIME ZONE
             coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date
$$;

COMMENT ON COLUMN report_site_daily.timezone IS 'Time zone of the day''s latest window: the site''s in sites, else the one that window was enriched with, else UTC (each window''s day is cut in its own).';
