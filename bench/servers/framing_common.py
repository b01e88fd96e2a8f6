"""What the framed benchmark servers share: the examples' programs, loaded from the
source tree, so that every server runs the same store and the same responder and only
the framing and the I/O differ."""
import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load_example(name):
    """examples/NAME/server.py as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
