"""The emulator's HTTPS: a throw-away CA (``trustme``) and a server certificate from it.

The SDK refuses bearer tokens over plain http, so the emulator must serve TLS.
A new CA is made at every start and its certificate written to ``<cert_dir>/ca.pem``
(atomically: a client never reads half a file); clients pass that path as
``connection_verify`` (Sluice: ``SLUICE_KEYVAULT_CA_FILE``). The private keys stay
in memory.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import trustme

CA_FILE = "ca.pem"
SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


def server_context(cert_dir: Path, *extra_names: str) -> tuple[ssl.SSLContext, Path]:
    """A TLS server context for the local names (and ``extra_names``), and the CA bundle it wrote."""
    ca = trustme.CA(organization_name="Sluice Key Vault emulator")
    names = list(dict.fromkeys([*SERVER_NAMES, *extra_names]))
    leaf = ca.issue_cert(*names)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    leaf.configure_cert(context)
    cert_dir.mkdir(parents=True, exist_ok=True)
    path = cert_dir / CA_FILE
    tmp = path.with_suffix(".pem.tmp")
    tmp.write_bytes(ca.cert_pem.bytes())
    os.replace(tmp, path)
    return context, path
