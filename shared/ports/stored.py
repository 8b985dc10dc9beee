"""Moved: ``StoredEvent`` is a domain value (``shared.domain.stored``), the time helpers are ``shared.domain.times``.

Kept only for ``shared.services.lookups`` until its rewrite (issue #16, point 4)
imports the domain directly; then this module goes.
"""

from shared.domain.stored import StoredEvent
from shared.domain.times import rfc3339, to_ms

__all__ = ["StoredEvent", "rfc3339", "to_ms"]
