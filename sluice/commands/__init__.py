"""One module per command; each defines ``register(subparsers)`` adding its parser with ``func=`` set."""
