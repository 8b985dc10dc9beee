"""A Key Vault secrets emulator for the unmodified azure-keyvault-secrets SDK.

``python -m emulators.keyvault --cert-dir DIR`` serves the Key Vault secrets REST
API over HTTPS (a throw-away CA made by ``trustme``, written to ``DIR/ca.pem``),
with the challenge-based bearer authentication the SDK expects. Any bearer token
is accepted: this is a development vault, not a security boundary.

* :mod:`emulators.keyvault.store`: the vault itself (versions, soft delete,
  validation, optional persistence); no HTTP.
* :mod:`emulators.keyvault.server`: the aiohttp application (routes, challenge,
  Azure's JSON shapes and errors).
* :mod:`emulators.keyvault.tls`: the local CA and the server's TLS context.

See docs/emulators/keyvault.md.
"""
