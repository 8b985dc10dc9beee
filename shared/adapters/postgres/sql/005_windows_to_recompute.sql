-- An event id re-sent with a later event time, in another window, moves its enriched row there
-- (the latest event time wins). The window it left still counted the event in its figures: the
-- write that moves a row marks that window, in the same transaction, and the next run computes
-- it again (its older row of the id then loses to the moved one and is not counted).

ALTER TABLE enrichment_windows ADD COLUMN recompute boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN enrichment_windows.recompute IS 'True when an event this window counted has since moved to another window (its id re-sent with a later event time): the next run computes the window again.';

CREATE INDEX enrichment_windows_to_recompute ON enrichment_windows (window_start) WHERE recompute;
