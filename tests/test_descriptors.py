"""stop() gives back every descriptor the server took (listener, poller, eventfd,
signal pipe), whether it ever served or not; start() racing stop() has one outcome."""
import threading

import pytest

from simpletcp.tcpserver import TCPServer
from support import connect, echo, open_descriptors, own_descriptors_before, recv_exactly

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("life", ["never started", "started", "served a client"])
def test_stopped_servers_still_referenced_hold_no_descriptor(backend, life):
    before = own_descriptors_before()
    kept = []
    for _ in range(300 if life == "never started" else 100):
        server = TCPServer("localhost", 0, echo, backend=backend)
        if life != "never started":
            server.start()
        if life == "served a client":
            with connect(server) as client:
                client.sendall(b"hi")
                assert recv_exactly(client, 2) == b"hi"
        assert server.stop(timeout=10)
        assert open_descriptors() == before, f"{len(kept)} servers stopped before this one"
        kept.append(server)
    assert open_descriptors() == before


def test_start_racing_stop_has_one_outcome_and_prints_nothing(backend, capfd):
    # stop() is final and wins any race: start() returns without error whether it ran
    # before, during or after the stop; the server ends stopped, holding no descriptor.
    before = own_descriptors_before()
    failures = []
    unhandled = []
    previous_hook = threading.excepthook
    threading.excepthook = unhandled.append
    try:
        for i in range(200):
            server = TCPServer("localhost", 0, echo, backend=backend)
            go = threading.Barrier(2)

            def stop_soon():
                go.wait()
                for _ in range(i % 7 * 20):  # vary who gets there first
                    pass
                server.stop(timeout=10)

            stopper = threading.Thread(target=stop_soon)
            stopper.start()
            go.wait()
            try:
                assert server.start() is server
            except Exception as exc:  # noqa: BLE001 - any exception is the failure
                failures.append(repr(exc))
            stopper.join(10)
            assert server.stop(timeout=10)
            assert not server.running
    finally:
        threading.excepthook = previous_hook
    assert not failures, failures[:3]
    assert not unhandled, unhandled[:3]
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert open_descriptors() == before
