"""A peer that vanishes without closing the connection (a firewall or NAT forgetting an idle flow, a host that
lost power) ends the engine's connection within its keepalive time, so the sync reconnects instead of waiting on
a dead socket for days. The link dies for real: an iptables rule drops every packet to a TCP relay between the
engine and the server, so no FIN or RST ever arrives."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from great_escape import db


@contextlib.contextmanager
def _relay(port: int) -> Iterator[int]:
    """A TCP relay on a port of its own to the server's port, for one connection at a time."""
    listener = socket.create_server(("127.0.0.1", 0))
    sockets = [listener]

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection(("127.0.0.1", port))
                sockets.extend([client, server])
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def _blackhole(port: int) -> Iterator[None]:
    """Every packet to the port is dropped from now on: the peer is gone without a word."""
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)


def test_every_connection_carries_keepalives_unless_configured_otherwise(dbpair):
    with db.connect(dbpair.source, "test keepalives") as conn:
        assert {k: conn.info.get_parameters().get(k) for k in db.KEEPALIVES} == \
            {k: str(v) for k, v in db.KEEPALIVES.items()}
    with db.connect({**dbpair.source, "keepalives_idle": 300}, "test keepalives") as conn:
        assert conn.info.get_parameters()["keepalives_idle"] == "300"


def test_a_waiting_connection_whose_peer_vanishes_fails_within_its_keepalive_time(dbpair):
    """A sync waiting for a kick sends nothing: only keepalive probes can tell that the peer is gone (and, on
    Linux, tcp_user_timeout decides when unanswered probes end the connection). With the kernel's defaults this
    wait would last its whole timeout (and a real one, days) and end without an error."""
    with _relay(int(dbpair.source["port"])) as port:
        params = {**dbpair.source, "port": port, "keepalives_idle": 1, "keepalives_interval": 1,
                  "tcp_user_timeout": 3000}
        with db.connect(params, "test dead link", autocommit=True) as conn:
            conn.execute("LISTEN great_escape_test")
            with _blackhole(port):
                started = time.monotonic()
                with pytest.raises(psycopg.OperationalError):
                    list(conn.notifies(timeout=60))
                assert time.monotonic() - started < 20


def test_a_query_to_a_vanished_peer_fails_within_the_user_timeout(dbpair):
    """A statement sent into a dead link is retransmitted for ~15 minutes by default; tcp_user_timeout ends it."""
    with _relay(int(dbpair.source["port"])) as port:
        params = {**dbpair.source, "port": port, "tcp_user_timeout": 3000}
        with db.connect(params, "test dead link", autocommit=True) as conn:
            with _blackhole(port):
                started = time.monotonic()
                with pytest.raises(psycopg.OperationalError):
                    conn.execute("SELECT 1")
                assert time.monotonic() - started < 20
