"""The CLI's own checks that need no study: ports for the UI."""

import errno
import socket

import pytest

from hybridlens.analysis.errors import UserError
from hybridlens.study.cli import _free_port


def _time_wait_port() -> int:
    """A port whose last connection the server side closed first: it sits in TIME_WAIT, no listener. The
    server sets SO_REUSEADDR, as the UI's (uvicorn) does: Linux lets a new bind over a TIME_WAIT socket
    only when both have it."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        conn.close()  # the server closes first: its end goes to TIME_WAIT
        cli.recv(1)
        cli.close()
    return port


def test_a_port_in_time_wait_after_a_stopped_ui_is_free():
    port = _time_wait_port()
    with socket.socket() as plain:  # what the check did before: a plain bind calls it busy
        with pytest.raises(OSError) as e:
            plain.bind(("127.0.0.1", port))
        assert e.value.errno == errno.EADDRINUSE
    assert _free_port("127.0.0.1", port) == port


def test_a_port_with_a_listener_is_busy():
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use"):
            _free_port("127.0.0.1", port)
