"""--certfile/--keyfile for the echo servers: the same server-side SSLContext for each
(bench/tls.py), so that they differ only in how they drive it."""
import ssl


def add_tls_arguments(parser):
    parser.add_argument("--certfile", default=None,
                        help="serve TLS with this certificate chain (PEM)")
    parser.add_argument("--keyfile", default=None, help="its private key (PEM)")


def server_context(args):
    """The standard library's server defaults with the certificate loaded, or None."""
    if args.certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.certfile, args.keyfile)
    return context
