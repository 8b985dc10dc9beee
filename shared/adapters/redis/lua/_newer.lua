-- Which copy of one event its keys keep, whatever order the writers come in (the change feed, a replay, a rebuild,
-- the lookups' fills): an event id re-sent with other content is kept as its copy enqueued later, the one the
-- change feed, applying in arrival order, ends with; at the same enqueued time the greater document (any fixed
-- rule will do). Documents carry "enqueued_time":"<RFC 3339, UTC, milliseconds>", which sorts as text.
local function enqueued(doc) return field(doc, 'enqueued_time') end
-- true when `previous` (a key's current copy, or false) stays rather than `doc`
local function keeps(previous, doc)
  if (not previous) or previous == doc then return false end
  local a, b = enqueued(previous), enqueued(doc)
  if a ~= b then return a > b end
  return previous > doc
end
