"""The Sluice function app (Python v2 programming model): one blueprint per trigger family.

The Functions host (or ``python -m devhost`` locally) indexes ``app``; each
blueprint lives in ``functions/`` and only decodes its binding, calls one service
and maps the outcome. Nothing here connects to anything: clients are built on
first use by ``shared.bootstrap``.
"""

import azure.functions as func

from functions.changefeed import bp as changefeed
from functions.dashboard import bp as dashboard
from functions.enrichment import bp as enrichment
from functions.ingest import bp as ingest
from functions.lookups import bp as lookups
from functions.state import bp as state

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(ingest)
app.register_functions(changefeed)
app.register_functions(lookups)
app.register_functions(enrichment)
app.register_functions(dashboard)
app.register_functions(state)
