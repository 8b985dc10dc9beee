-- report_site_daily took the name and region of a site no longer in the reference data as max() of
-- each day's enriched names: the alphabetically last, so a site renamed before it left could show its
-- old name, and each day the name of that day. A listed site shows its current name on every day; an
-- unlisted one now shows what the reference data last said of it: the name and region of its latest
-- window enriched with a reference row, on every day (one index probe per row of such a site).

CREATE OR REPLACE VIEW report_site_daily AS
SELECT
    s.site_id,
    coalesce(max(st.name), (SELECT l.site_name FROM site_window_stats l
                            WHERE l.site_id = s.site_id AND l.site_name IS NOT NULL
                            ORDER BY l.window_start DESC LIMIT 1)) AS site_name,
    coalesce(max(st.region), (SELECT l.region FROM site_window_stats l
                              WHERE l.site_id = s.site_id AND l.site_name IS NOT NULL
                              ORDER BY l.window_start DESC LIMIT 1)) AS region,
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
COMMENT ON COLUMN report_site_daily.region IS 'Site region from the current reference data (when the site is no longer listed: its region in its latest window enriched with a reference row).';
