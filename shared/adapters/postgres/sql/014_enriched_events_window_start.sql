-- sluice: no transaction
-- The recompute of a window an event moved out of stages the rows enriched_events holds for the window
-- (WHERE window_start = ...), inside the window's transaction and under SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS. No
-- index led with window_start (only the key and (device_id, event_time)), so it read the whole table: at a few
-- hundred million rows it timed out, and the marked window, first of every run, stopped the enrichment for good.
--
-- Built CONCURRENTLY, outside a transaction (the first line above tells the runner), so the enrichment keeps writing
-- the table while the index builds: a plain CREATE INDEX would hold a SHARE lock, blocking every write, for the whole
-- build. A concurrent build that failed (connection lost, cancelled) leaves an INVALID index behind, which IF NOT
-- EXISTS would then take for done: this migration is recorded only once the build succeeded, so a leftover of the
-- same name is one of its own failed runs and is dropped first (concurrently too; a valid index left by a run that
-- died before recording itself is built again, nothing worse).
DROP INDEX CONCURRENTLY IF EXISTS enriched_events_window_start;
-- sluice: next statement
CREATE INDEX CONCURRENTLY enriched_events_window_start ON enriched_events (window_start);
-- sluice: next statement
COMMENT ON INDEX enriched_events_window_start IS 'The rows of one enrichment window (the recompute of a window an event moved out of reads them).';
