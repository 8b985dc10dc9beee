-- Enriched events, per-window figures and the enrichment ledger.
-- Windows are [window_start, window_end) in UTC, aligned to the Unix epoch.
-- Every window is written in ONE transaction together with its ledger row and the
-- watermark, so a window is either fully enriched and recorded, or not at all.

CREATE TABLE enriched_events (
    event_id      uuid PRIMARY KEY,
    window_start  timestamptz NOT NULL,
    device_id     text NOT NULL,
    event_time    timestamptz NOT NULL,
    enqueued_time timestamptz,
    event_type    text NOT NULL,
    severity      text NOT NULL,
    critical      boolean NOT NULL,
    measurements  jsonb NOT NULL,
    known_device  boolean NOT NULL,
    site_id       text,
    model         text,
    firmware      text,
    owner         text,
    site_name     text,
    region        text,
    site_timezone text,
    enriched_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX enriched_events_device_time ON enriched_events (device_id, event_time);

COMMENT ON TABLE enriched_events IS 'One row per event (keyed by event_id) with the reference data known when its window was last enriched.';
COMMENT ON COLUMN enriched_events.event_id IS 'Event identifier from the device (UUID); re-enrichment updates the row in place.';
COMMENT ON COLUMN enriched_events.window_start IS 'Start of the enrichment window holding event_time (UTC; the window is [start, start + window length)).';
COMMENT ON COLUMN enriched_events.device_id IS 'Sending device.';
COMMENT ON COLUMN enriched_events.event_time IS 'When the device says the event happened (UTC, millisecond precision).';
COMMENT ON COLUMN enriched_events.enqueued_time IS 'When Event Hubs accepted the event (UTC); later than the window end + lateness means it arrived late.';
COMMENT ON COLUMN enriched_events.event_type IS 'Event type sent by the device.';
COMMENT ON COLUMN enriched_events.severity IS 'info, warning or critical, as sent.';
COMMENT ON COLUMN enriched_events.critical IS 'True when the event is critical (severity critical or a configured measurement rule matched at ingest).';
COMMENT ON COLUMN enriched_events.measurements IS 'Measurement name -> numeric value, as sent.';
COMMENT ON COLUMN enriched_events.known_device IS 'False when the device had no row in the devices reference data at enrichment time.';
COMMENT ON COLUMN enriched_events.site_id IS 'Site of the device (devices.site_id); NULL for unknown devices.';
COMMENT ON COLUMN enriched_events.model IS 'Device model (devices.model).';
COMMENT ON COLUMN enriched_events.firmware IS 'Device firmware at enrichment time (devices.firmware).';
COMMENT ON COLUMN enriched_events.owner IS 'Device owner (devices.owner).';
COMMENT ON COLUMN enriched_events.site_name IS 'Site name (sites.name); NULL when the site is unknown.';
COMMENT ON COLUMN enriched_events.region IS 'Site region (sites.region).';
COMMENT ON COLUMN enriched_events.site_timezone IS 'Site IANA time zone (sites.timezone).';
COMMENT ON COLUMN enriched_events.enriched_at IS 'When this row last changed (unchanged when a re-run produced the same values).';

CREATE TABLE device_window_stats (
    window_start     timestamptz NOT NULL,
    device_id        text NOT NULL,
    window_end       timestamptz NOT NULL,
    known_device     boolean NOT NULL,
    site_id          text,
    event_count      integer NOT NULL CHECK (event_count > 0),
    critical_count   integer NOT NULL CHECK (critical_count >= 0),
    first_event_time timestamptz NOT NULL,
    last_event_time  timestamptz NOT NULL,
    measurements     jsonb NOT NULL,
    enriched_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start, device_id)
);

CREATE INDEX device_window_stats_device ON device_window_stats (device_id, window_start);
CREATE INDEX device_window_stats_unknown ON device_window_stats (device_id) WHERE NOT known_device;

COMMENT ON TABLE device_window_stats IS 'Per device per window figures, recomputed from every event of the window on each enrichment.';
COMMENT ON COLUMN device_window_stats.window_start IS 'Window start (UTC, inclusive).';
COMMENT ON COLUMN device_window_stats.device_id IS 'Device.';
COMMENT ON COLUMN device_window_stats.window_end IS 'Window end (UTC, exclusive).';
COMMENT ON COLUMN device_window_stats.known_device IS 'False when the device had no reference row at enrichment time.';
COMMENT ON COLUMN device_window_stats.site_id IS 'Site of the device at enrichment time; NULL for unknown devices.';
COMMENT ON COLUMN device_window_stats.event_count IS 'Distinct events of the device in the window.';
COMMENT ON COLUMN device_window_stats.critical_count IS 'How many of them were critical.';
COMMENT ON COLUMN device_window_stats.first_event_time IS 'Earliest event_time in the window.';
COMMENT ON COLUMN device_window_stats.last_event_time IS 'Latest event_time in the window.';
COMMENT ON COLUMN device_window_stats.measurements IS 'Per measurement name: {"count", "min", "max", "avg", "last"}; last is the value of the latest event (ties broken by event_id).';
COMMENT ON COLUMN device_window_stats.enriched_at IS 'When this row last changed.';

CREATE TABLE site_window_stats (
    window_start   timestamptz NOT NULL,
    site_id        text NOT NULL,
    window_end     timestamptz NOT NULL,
    site_name      text,
    region         text,
    device_count   integer NOT NULL CHECK (device_count > 0),
    event_count    integer NOT NULL CHECK (event_count > 0),
    critical_count integer NOT NULL CHECK (critical_count >= 0),
    measurements   jsonb NOT NULL,
    enriched_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start, site_id)
);

CREATE INDEX site_window_stats_site ON site_window_stats (site_id, window_start);

COMMENT ON TABLE site_window_stats IS 'Per site per window figures over the events of the devices assigned to the site (unknown devices are counted in enrichment_windows instead).';
COMMENT ON COLUMN site_window_stats.window_start IS 'Window start (UTC, inclusive).';
COMMENT ON COLUMN site_window_stats.site_id IS 'Site (devices.site_id).';
COMMENT ON COLUMN site_window_stats.window_end IS 'Window end (UTC, exclusive).';
COMMENT ON COLUMN site_window_stats.site_name IS 'Site name at enrichment time; NULL when the site has no reference row.';
COMMENT ON COLUMN site_window_stats.region IS 'Site region at enrichment time.';
COMMENT ON COLUMN site_window_stats.device_count IS 'Distinct devices of the site that sent events in the window.';
COMMENT ON COLUMN site_window_stats.event_count IS 'Events of the site in the window.';
COMMENT ON COLUMN site_window_stats.critical_count IS 'How many of them were critical.';
COMMENT ON COLUMN site_window_stats.measurements IS 'Per measurement name over all the site''s events: {"count", "min", "max", "avg", "last"}.';
COMMENT ON COLUMN site_window_stats.enriched_at IS 'When this row last changed.';

CREATE TABLE enrichment_windows (
    window_start          timestamptz PRIMARY KEY,
    window_end            timestamptz NOT NULL,
    event_count           integer NOT NULL,
    device_count          integer NOT NULL,
    unknown_device_count  integer NOT NULL,
    unknown_device_events integer NOT NULL,
    reason                text NOT NULL CHECK (reason IN ('scheduled', 'late', 'backfill')),
    runs                  integer NOT NULL DEFAULT 1,
    first_enriched_at     timestamptz NOT NULL DEFAULT now(),
    last_enriched_at      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE enrichment_windows IS 'Ledger: one row per enriched window, written in the same transaction as the window''s rows.';
COMMENT ON COLUMN enrichment_windows.window_start IS 'Window start (UTC, inclusive).';
COMMENT ON COLUMN enrichment_windows.window_end IS 'Window end (UTC, exclusive).';
COMMENT ON COLUMN enrichment_windows.event_count IS 'Distinct events read for the window at its last enrichment.';
COMMENT ON COLUMN enrichment_windows.device_count IS 'Distinct devices among them.';
COMMENT ON COLUMN enrichment_windows.unknown_device_count IS 'Distinct devices without a reference row.';
COMMENT ON COLUMN enrichment_windows.unknown_device_events IS 'Events of those devices (enriched with NULL reference columns).';
COMMENT ON COLUMN enrichment_windows.reason IS 'Why the window was last enriched: scheduled (closed), late (late events arrived) or backfill.';
COMMENT ON COLUMN enrichment_windows.runs IS 'How many times the window has been enriched.';
COMMENT ON COLUMN enrichment_windows.first_enriched_at IS 'First enrichment of the window.';
COMMENT ON COLUMN enrichment_windows.last_enriched_at IS 'Latest enrichment of the window.';

CREATE TABLE enrichment_state (
    name            text PRIMARY KEY,
    watermark       timestamptz NOT NULL,
    late_scan_until timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE enrichment_state IS 'Positions of the enrichment: saved in the same transaction as the rows they cover.';
COMMENT ON COLUMN enrichment_state.name IS 'Which enrichment (one row, "default").';
COMMENT ON COLUMN enrichment_state.watermark IS 'Every window ending at or before this instant is enriched (UTC, exclusive end of the last contiguous window).';
COMMENT ON COLUMN enrichment_state.late_scan_until IS 'Arrival (Event Hubs enqueued) time up to which late events have been looked for.';
COMMENT ON COLUMN enrichment_state.updated_at IS 'When a position last moved.';
