-- A top-level string field of a stored JSON document, or '' (no such field, or no JSON document at all: a member
-- a buggy release wrote). Decoded, not matched as text: "attributes" sorts first and its names are free text, so
-- an attribute named like the field would be found first by a pattern. Called only off the hot path (a copy
-- already there, a tie of one millisecond, a rebuild), so the decoding costs nothing per ordinary event.
local function field(doc, name)
  local ok, decoded = pcall(cjson.decode, doc)
  if ok and type(decoded) == 'table' and type(decoded[name]) == 'string' then return decoded[name] end
  return ''
end
