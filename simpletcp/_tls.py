"""TLS contexts from files: the command line's --certfile, --keyfile, --ca-certs and
--require-client-cert (gunicorn's names; uvicorn's --ssl-* spellings are aliases)."""
from __future__ import annotations

import ssl
from typing import Optional


def server_context(certfile: str, keyfile: Optional[str] = None,
                   ca_certs: Optional[str] = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A server-side SSLContext with the standard library's defaults (TLS 1.2 and up,
    its cipher choice), the certificate chain of ``certfile`` (and its key, from
    ``keyfile`` or from ``certfile`` itself), and the CAs of ``ca_certs`` to verify
    client certificates with: asked for if given, required with ``require_client_cert``.
    OSError if a file cannot be read; ssl.SSLError (an OSError) if it holds no valid
    PEM, or the key does not match."""
    if require_client_cert and ca_certs is None:
        raise ValueError("require_client_cert needs ca_certs: the CA certificates that "
                         "client certificates are verified against")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    if ca_certs is not None:
        context.load_verify_locations(cafile=ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context
