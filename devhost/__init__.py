"""Run a Python v2 Azure Functions app (``function_app.py``) without Azure Functions Core Tools.

``python -m devhost [--settings local.settings.json] [--port 7071]``: see
``docs/devhost.md`` for what it mirrors of the Functions host and where it differs.
"""
