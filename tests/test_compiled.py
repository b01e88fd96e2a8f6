"""The hot loop is the compiled extension, never a pure-Python stand-in."""
import importlib.machinery
import inspect

import simpletcp._loop as loop_module
import simpletcp.tcpserver as tcpserver


def test_loop_module_is_a_compiled_extension():
    assert loop_module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert isinstance(loop_module.__loader__, importlib.machinery.ExtensionFileLoader)


def test_server_delegates_to_the_compiled_loop():
    assert tcpserver.Loop is loop_module.Loop
    # Cython's compiled functions are their own type, never Python functions.
    for method in (loop_module.Loop.run, loop_module.ConnectionQueue.put):
        assert not inspect.isfunction(method)
        assert type(method).__name__ == "cython_function_or_method"
