"""TLS contexts from files: the command line's --certfile, --keyfile, --ca-certs and
--require-client-cert (gunicorn's names; uvicorn's --ssl-* spellings are aliases)."""
from __future__ import annotations

import contextlib
import ssl
from typing import Iterator, Optional


def server_context(certfile: str, keyfile: Optional[str] = None,
                   ca_certs: Optional[str] = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A server-side SSLContext with the standard library's defaults (TLS 1.2 and up,
    its cipher choice), the certificate chain of ``certfile`` (and its key, from
    ``keyfile`` or from ``certfile`` itself), and the CAs of ``ca_certs`` to verify
    client certificates with: asked for if given, required with ``require_client_cert``.
    OSError naming the file if one cannot be read, or what it was to hold if it does
    not (no valid PEM, a key that does not match the certificate)."""
    if require_client_cert and ca_certs is None:
        raise ValueError("require_client_cert needs ca_certs: the CA certificates that "
                         "client certificates are verified against")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    key_source = "its private key" if keyfile is None else f"the private key in {keyfile}"
    with _loading(f"the certificate chain in {certfile} and {key_source}",
                  certfile, keyfile):
        context.load_cert_chain(certfile, keyfile)
    if ca_certs is not None:
        with _loading(f"the CA certificates in {ca_certs}", ca_certs):
            context.load_verify_locations(cafile=ca_certs)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


@contextlib.contextmanager
def _loading(what: str, *paths: Optional[str]) -> Iterator[None]:
    """Load ``what`` from ``paths``, with errors that say which file: OpenSSL's own name
    none ("[Errno 2] No such file or directory", "[SSL] PEM lib")."""
    for path in paths:
        if path is not None:
            with open(path, "rb"):  # OSError with the file's name, if it cannot be read
                pass
    try:
        yield
    except ssl.SSLError as error:
        raise ssl.SSLError(error.errno, f"cannot load {what}: {error}") from None
