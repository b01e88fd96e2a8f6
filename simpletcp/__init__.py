"""simpletcp: a non-blocking TCP server that serves a Python callback from a compiled loop.

    from simpletcp.tcpserver import TCPServer

    def echo(queue, data):
        queue.put(data)

    TCPServer("localhost", 5000, echo).run()
"""
__version__ = "1.0.0.dev0"
