"""Sluice's pipeline: the domain, the services, their ports and the adapters that implement them.

Dependencies point one way: ``functions`` -> ``services`` -> ``ports`` <- ``adapters``.
Only adapters import ``cassandra``, ``redis``, ``psycopg`` or ``azure.*`` (other
than ``azure.functions``); ``bootstrap`` is the one place that wires them.
"""
