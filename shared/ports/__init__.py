"""Ports: the small interfaces services depend on; adapters implement them."""
