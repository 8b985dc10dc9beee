-- The reporting views cut a site's days in its time zone from the sites table, which only `reference load`
-- fills: with SLUICE_ENRICH_REFERENCE_SOURCE=parquet (the reference data in blobs only) every site's days were cut
-- in UTC, so a New York site's evening events were reported on the next day, although the enrichment knew its
-- zone. Each window's site figures now keep the zone they were enriched with, and a site sites does not list
-- has its days cut in that zone (a listed site in its current one, as before; UTC when neither gives one).
-- Windows enriched before this migration have no zone until they are computed again (`sluice backfill`).

ALTER TABLE site_window_stats ADD COLUMN site_timezone text;

COMMENT ON COLUMN site_window_stats.site_timezone IS 'Site IANA time zone at enrichment time; NULL when the site has no reference row or no zone (or the window was enriched before this column existed). The reporting views cut the days of a site not listed in sites in this zone.';

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
    coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC') AS timezone,
    (s.window_start AT TIME ZONE
        coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date AS local_day,
    sum(s.event_count)::bigint AS event_count,
    sum(s.critical_count)::bigint AS critical_count,
    round(sum(s.critical_count)::numeric / nullif(sum(s.event_count), 0), 4) AS critical_ratio,
    max(s.device_count) AS peak_active_devices,
    count(*) AS active_windows,
    min(s.window_start) AS first_window_start,
    max(s.window_end) AS last_window_end
FROM site_window_stats s
LEFT JOIN sites st ON st.site_id = s.site_id
GROUP BY s.site_id, coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'),
         (s.window_start AT TIME ZONE
             coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date;

COMMENT ON VIEW report_site_daily IS 'Daily summary per site, days in the site''s local time zone (from sites; for a site sites does not list, the zone its window was enriched with; UTC when unknown).';
COMMENT ON COLUMN report_site_daily.timezone IS 'Time zone used to cut local days: the site''s in sites, else the one its windows were enriched with, else UTC.';

CREATE OR REPLACE VIEW report_site_measurement_daily AS
SELECT
    s.site_id,
    (s.window_start AT TIME ZONE
        coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date AS local_day,
    m.key AS measurement,
    sum((m.value ->> 'count')::bigint) AS sample_count,
    min((m.value ->> 'min')::double precision) AS min_value,
    max((m.value ->> 'max')::double precision) AS max_value,
    (sum((m.value ->> 'avg')::numeric * (m.value ->> 'count')::bigint)
        / nullif(sum((m.value ->> 'count')::bigint), 0))::double precision AS avg_value
FROM site_window_stats s
LEFT JOIN sites st ON st.site_id = s.site_id
CROSS JOIN LATERAL jsonb_each(s.measurements) AS m(key, value)
GROUP BY s.site_id,
         (s.window_start AT TIME ZONE
             coalesce(CASE WHEN st.site_id IS NOT NULL THEN st.timezone ELSE s.site_timezone END, 'UTC'))::date,
         m.key;

COMMENT ON VIEW report_site_measurement_daily IS 'Daily per site per measurement figures (site local days, cut as in report_site_daily).';
