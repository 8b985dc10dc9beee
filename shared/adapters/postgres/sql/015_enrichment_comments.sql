-- enrichment_state.updated_at is when the watermark last moved: /api/status reports its age as
-- enrichment.staleness_seconds. Saving the late-scan position set it too, on every run, so a watermark standing
-- still read as just moved; that save no longer touches it, and the comment says which position it follows.
COMMENT ON COLUMN enrichment_state.updated_at IS 'When the watermark last moved (the late-scan position moving does not set it).';
-- Every recompute of an enriched window now reads its rows on the index of migration 014, not only a marked one's.
COMMENT ON INDEX enriched_events_window_start IS 'The rows of one enrichment window (every recompute of an enriched window reads them).';
