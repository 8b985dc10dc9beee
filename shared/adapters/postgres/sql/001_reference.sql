-- Reference data joined to events by enrichment: sites and the devices installed at them.
-- Loaded by `python -m sluice reference load` (upsert by key); no foreign key from
-- devices to sites, so either file may be loaded first and a device may name a site
-- that is not (yet) known: its site columns are then NULL in enriched rows.

CREATE TABLE sites (
    site_id    text PRIMARY KEY,
    name       text NOT NULL,
    region     text,
    timezone   text,
    latitude   double precision CHECK (latitude BETWEEN -90 AND 90),
    longitude  double precision CHECK (longitude BETWEEN -180 AND 180),
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE sites IS 'Reference data: the sites devices are installed at (one row per site).';
COMMENT ON COLUMN sites.site_id IS 'Stable site identifier, as used in devices.site_id.';
COMMENT ON COLUMN sites.name IS 'Human-readable site name.';
COMMENT ON COLUMN sites.region IS 'Operating region the site belongs to (free text, e.g. eu-west).';
COMMENT ON COLUMN sites.timezone IS 'IANA time zone of the site (e.g. Europe/Paris); daily reports use it for local days.';
COMMENT ON COLUMN sites.latitude IS 'WGS84 latitude in degrees.';
COMMENT ON COLUMN sites.longitude IS 'WGS84 longitude in degrees.';
COMMENT ON COLUMN sites.updated_at IS 'When the loader last changed this row.';

CREATE TABLE devices (
    device_id    text PRIMARY KEY,
    site_id      text,
    model        text,
    firmware     text,
    owner        text,
    installed_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX devices_site_id ON devices (site_id);

COMMENT ON TABLE devices IS 'Reference data: one row per known device; events of devices missing here are enriched with NULL reference columns.';
COMMENT ON COLUMN devices.device_id IS 'Device identifier as sent in events (device_id).';
COMMENT ON COLUMN devices.site_id IS 'Site the device is installed at (sites.site_id); NULL when not assigned.';
COMMENT ON COLUMN devices.model IS 'Hardware model.';
COMMENT ON COLUMN devices.firmware IS 'Firmware version currently installed.';
COMMENT ON COLUMN devices.owner IS 'Owning team or customer.';
COMMENT ON COLUMN devices.installed_at IS 'When the device was installed (UTC).';
COMMENT ON COLUMN devices.updated_at IS 'When the loader last changed this row.';
