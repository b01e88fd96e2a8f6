"""simpletcp: a non-blocking TCP server that serves a Python callback from a compiled loop.

    from simpletcp.tcpserver import TCPServer

    def echo(queue, data):
        queue.put(data)

    TCPServer("localhost", 5000, echo).run()
"""
import importlib as _importlib
import os as _os
import sys as _sys

__version__ = "1.0.0.dev0"


def _explain_missing_loop(error: ImportError) -> str:
    """What went wrong when the compiled loop (simpletcp._loop) cannot be imported."""
    package = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(package)
    python = f"Python {_sys.version.split()[0]} ({_sys.executable})"
    if isinstance(error, ModuleNotFoundError) and error.name == "simpletcp._loop":
        problem = f"the compiled loop, simpletcp._loop, has not been built for {python}"
    else:
        problem = f"the compiled loop, simpletcp._loop, cannot be loaded by {python}: {error}"
    if _os.path.exists(_os.path.join(root, "setup.py")) and _os.path.isdir(
            _os.path.join(root, "src_pyx")):
        # Python put the current directory first on sys.path (python -m, a prompt, a
        # script at the root) and found the checkout's simpletcp/ before the installed one.
        return (
            f"simpletcp was imported from its source tree, {package}, where {problem}. "
            f"Run `pip install .` in {root} (it builds the loop and puts a copy in the "
            "tree), or run Python from another directory to import the installed simpletcp."
        )
    return (
        f"simpletcp is installed in {package}, but {problem}. Reinstall it for this "
        "Python: `python -m pip install --force-reinstall simpletcp`."
    )


# Eagerly, so that a missing or broken build says so at `import simpletcp`, not as a
# bare "No module named 'simpletcp._loop'" deep inside the first use.
try:
    _importlib.import_module("simpletcp._loop")
except ImportError as _error:
    raise ImportError(_explain_missing_loop(_error), name=__name__, path=__file__) from _error

# Why a connection closed (queue.close_reason), for on_disconnect.
from simpletcp._loop import CloseReason as CloseReason  # noqa: E402  (after the check above)
# What a TLS connection's handshake agreed on (queue.tls), for annotations.
from simpletcp._loop import TLSInfo as TLSInfo  # noqa: E402
# What an SSLContext's sni_callback is given as the connection (README, "TLS").
from simpletcp._loop import TLSSessionView as TLSSessionView  # noqa: E402
