-- report_site_daily took a site's region as coalesce(<the sites row's region>, <its latest enriched window's
-- region>), so a site still listed whose current reference data has no region (sites.region is optional) kept
-- showing a region the reference data no longer has, on every day. The fallback of 006 is meant only for a site no
-- longer listed: a listed site now shows its current name and region, NULL included, whatever its windows say.

CREATE OR REPLACE VIEW report_site_daily AS
SELECT
    s.site_id,
    CASE WHEN bool_or(st.site_id IS NOT NULL) THEN max(st.name)
         ELSE (SELECT l.site_name FROM site_window_stats l
               WHERE l.site_id = s.site_id AND l.site_name IS NOT NULL
               ORDER BY l.window_start DESC LIMIT 1) END AS site_name,
    CASE WHEN bool_or(st.site_id IS NOT NULL) THEN max(st.region)
         ELSE (SELECT l.region FROM site_window_stats l
               WHERE l.site_id = s.site_id AND l.site_name IS NOT NULL
               ORDER BY l.window_start DESC LIMIT 1) END AS region,
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

COMMENT ON COLUMN report_site_daily.site_name IS 'Site name from the current reference data (when the site is no longer listed: its name in its latest window enriched with a reference row).';
COMMENT ON COLUMN report_site_daily.region IS 'Site region from the current reference data, NULL when it gives none (when the site is no longer listed: its region in its latest window enriched with a reference row).';
