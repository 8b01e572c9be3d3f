"""An emulated WAN link for the copy benchmark: a network namespace holding the "data centre" (the source
cluster, pg_dump, the rsync that pushes the dump) and a veth pair to the root namespace, which plays AWS
(the replication host, Ansible's controller, pgcopydb and the target). Both ends of the pair are shaped with
`tc tbf` (ENVIRONMENT.md: netem is not available in this kernel, so there is no added delay or loss: the
link has the bandwidth of a WAN, not its round-trip time).

Every byte from a process in the namespace to one in the root namespace crosses the shaped pair; the
addresses below belong to this pair only. One sshd per side (own config, host key and authorized key
under BENCH_ROOT/wan, nothing of the system's sshd touched) carries Ansible's connection to the source
host and rsync's pushes to the replication host, as ssh would between two real sites.

    with Link() as link:          # cleans a killed run's leftovers, sets up, tears down in `finally`
        link.measure(200 << 20)   # raw TCP rate source -> AWS, to prove the shaping
        link.ns(["pg_dump", ...]) # a command on the source side
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import common as c

NS = "ge-bench-wan"
HOST_IF, NS_IF = "gewan0", "gewan1"  # root-namespace (AWS) end, namespace (source) end
HOST_ADDR, NS_ADDR = "10.213.0.1", "10.213.0.2"
PREFIX = 30
RATE = "400mbit"  # the default; Link(rate=...) for another


def tbf(rate: str) -> list[str]:
    """The qdisc of both ends of the pair (tc's arguments after `root`)."""
    return ["tbf", "rate", rate, "burst", "256kb", "latency", "50ms"]
HOST_SSH_PORT = 2213  # sshd of the replication host side, on HOST_ADDR only
NS_SSH_PORT = 22  # sshd of the source host side, on NS_ADDR inside the namespace
MEASURE_PORT = 2214
WAN_DIR = c.BENCH_ROOT / "wan"
LOCK_WAIT = 600  # seconds to wait for another run's link to go away


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, text=True, capture_output=True)


def _sh(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if proc.returncode != 0:
        raise c.BenchError(f"WAN link: {what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stderr.strip()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pids(pids: list[int], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL what is left after `timeout`: only pids this benchmark started (its
    namespace's processes, its own sshd pid files)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _ns_pids() -> list[int]:
    proc = _ip("netns", "pids", NS, check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def cleanup() -> list[str]:
    """Remove whatever a killed run left: processes in the namespace (its source cluster, sshd), the
    host-side sshd (by its pid file), the namespace and the veth pair. Returns what was found."""
    found = []
    pids = _ns_pids()
    if pids:
        found.append(f"{len(pids)} process(es) in netns {NS}")
        _stop_pids(pids)
    pidfile = WAN_DIR / "sshd-host.pid"
    if pidfile.exists():
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if str(WAN_DIR) in cmdline:  # our sshd, not a recycled pid
                found.append(f"host sshd {pid}")
                _stop_pids([pid])
        pidfile.unlink(missing_ok=True)
    if NS in _ip("netns", "list", check=False).stdout.split():
        found.append(f"netns {NS}")
        _ip("netns", "del", NS, check=False)
    if _ip("link", "show", HOST_IF, check=False).returncode == 0:
        found.append(f"link {HOST_IF}")
        _ip("link", "del", HOST_IF, check=False)
    return found


def _keys() -> tuple[Path, Path]:
    """(client key, host key) under WAN_DIR, made once and reused."""
    WAN_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(WAN_DIR, 0o700)
    client, host = WAN_DIR / "id_ed25519", WAN_DIR / "host_ed25519"
    for key in (client, host):
        if not key.exists():
            _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ge-bench-wan", "-f", str(key)], "ssh-keygen")
    (WAN_DIR / "authorized_keys").write_text(Path(f"{client}.pub").read_text())
    os.chmod(WAN_DIR / "authorized_keys", 0o600)
    return client, host


class Link:
    """The namespace, the shaped veth pair and one sshd per side; a context manager."""

    def __init__(self, rate: str = RATE) -> None:
        self.rate = rate
        self.key: Path | None = None
        self._sshd: list[subprocess.Popen[bytes]] = []
        self.leftovers: list[str] = []
        self._lock: Any = None

    # ------------------------------------------------------------------ set up and tear down

    def _acquire(self) -> None:
        """One link per machine: a second run waits for the first (the kernel drops a killed run's lock,
        so what is left after acquiring it is a leftover, safe to clean)."""
        WAN_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = (WAN_DIR / "lock").open("a+")
        deadline = time.monotonic() + LOCK_WAIT
        told = False
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock.close()
                    raise c.BenchError(f"WAN link: another benchmark run holds {WAN_DIR / 'lock'} for more "
                                       f"than {LOCK_WAIT} s; wait for it to end") from None
                if not told:
                    print("wan: another run holds the WAN link; waiting", file=sys.stderr, flush=True)
                    told = True
                time.sleep(1)
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()

    def __enter__(self) -> Link:
        self._acquire()
        self.leftovers = cleanup()
        if self.leftovers:
            print(f"wan: removed leftovers of an earlier run: {', '.join(self.leftovers)}", file=sys.stderr)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def _setup(self) -> None:
        _sh(["ip", "netns", "add", NS], "ip netns add")
        _sh(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NS], "veth pair")
        _sh(["ip", "addr", "add", f"{HOST_ADDR}/{PREFIX}", "dev", HOST_IF], "host address")
        _sh(["ip", "link", "set", HOST_IF, "up"], "host link up")
        _sh(["ip", "-n", NS, "addr", "add", f"{NS_ADDR}/{PREFIX}", "dev", NS_IF], "namespace address")
        _sh(["ip", "-n", NS, "link", "set", NS_IF, "up"], "namespace link up")
        _sh(["ip", "-n", NS, "link", "set", "lo", "up"], "namespace loopback up")
        # Both directions: the data (source -> AWS) leaves through NS_IF, requests and ACKs through HOST_IF.
        _sh(["tc", "qdisc", "add", "dev", HOST_IF, "root", *tbf(self.rate)], "tc tbf on the host end")
        _sh(["ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", NS_IF, "root", *tbf(self.rate)],
            "tc tbf on the namespace end")
        self.key, host_key = _keys()
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        for side, addr, port, prefix in (("host", HOST_ADDR, HOST_SSH_PORT, []),
                                         ("ns", NS_ADDR, NS_SSH_PORT, ["ip", "netns", "exec", NS])):
            cfg = WAN_DIR / f"sshd-{side}.conf"
            cfg.write_text("\n".join([
                f"ListenAddress {addr}:{port}", f"HostKey {host_key}", f"PidFile {WAN_DIR}/sshd-{side}.pid",
                f"AuthorizedKeysFile {WAN_DIR}/authorized_keys", "PermitRootLogin prohibit-password",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
                "MaxStartups 100:30:200", "MaxSessions 100", "LogLevel ERROR",
                "Subsystem sftp /usr/lib/openssh/sftp-server", ""]))
            log = (WAN_DIR / f"sshd-{side}.log").open("wb")
            self._sshd.append(subprocess.Popen([*prefix, "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)],
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 20
        while True:
            ok = [subprocess.run(cmd, capture_output=True).returncode == 0
                  for cmd in (self.ns(self.ssh_argv(HOST_ADDR, HOST_SSH_PORT) + ["true"]),
                              self.ssh_argv(NS_ADDR, NS_SSH_PORT) + ["true"])]
            if all(ok):
                break
            if time.monotonic() > deadline:
                logs = "\n".join((WAN_DIR / f"sshd-{s}.log").read_text(errors="replace")[-500:] for s in ("host", "ns"))
                raise c.BenchError(f"WAN link: ssh across the pair does not answer (host, ns = {ok}):\n{logs}")
            time.sleep(0.3)

    def close(self) -> None:
        try:
            for proc in self._sshd:
                c.kill_tree(proc, timeout=5)
            self._sshd.clear()
            cleanup()
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the flock
                self._lock = None

    # ------------------------------------------------------------------ using the link

    @staticmethod
    def ns(cmd: list[str]) -> list[str]:
        """`cmd` run on the source side (inside the namespace)."""
        return ["ip", "netns", "exec", NS, *cmd]

    def ssh_options(self) -> list[str]:
        return ["-i", str(self.key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]

    def ssh_argv(self, addr: str, port: int) -> list[str]:
        return ["ssh", "-p", str(port), *self.ssh_options(), f"root@{addr}"]

    def rsh(self, port: int = HOST_SSH_PORT) -> str:
        """rsync's --rsh for a push from the source side to the replication host side."""
        return " ".join(["ssh", "-p", str(port), *self.ssh_options()])

    @staticmethod
    def counters() -> tuple[int, int]:
        """(bytes source -> AWS, bytes AWS -> source) that crossed the pair so far."""
        stats = Path(f"/sys/class/net/{HOST_IF}/statistics")
        return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())

    def measure(self, nbytes: int, timeout: float = 120) -> float:
        """Raw TCP rate in bytes/s from the source side to the AWS side: `nbytes` of zeros from a
        client in the namespace to a server on HOST_ADDR, timed by the server from its first byte to EOF."""
        result: dict[str, float] = {}
        with socket.create_server((HOST_ADDR, MEASURE_PORT)) as server:
            server.settimeout(timeout)

            def serve() -> None:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(timeout)
                    got = len(conn.recv(1 << 20))
                    first = time.monotonic()
                    while chunk := conn.recv(1 << 20):
                        got += len(chunk)
                    result["seconds"], result["bytes"] = time.monotonic() - first, got

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            sender = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n"
                      "b=bytes(1<<20)\nn=int(sys.argv[3])\nwhile n>0:\n s.sendall(b[:min(n,len(b))]);n-=len(b)\n"
                      "s.close()\n")
            c.run(self.ns([sys.executable, "-c", sender, HOST_ADDR, str(MEASURE_PORT), str(nbytes)]),
                  timeout=timeout, what="WAN rate measurement")
            thread.join(timeout)
        if "seconds" not in result or result["bytes"] < nbytes:
            raise c.BenchError(f"WAN rate measurement: received {result.get('bytes', 0)} of {nbytes} bytes")
        return result["bytes"] / result["seconds"]


def move_source(cluster: Any) -> dict[str, Any]:
    """Restart a stopped-or-running LocalCluster inside the namespace, listening on NS_ADDR only (same
    data directory, port and log); returns its superuser parameters as seen from the AWS side."""
    cluster.stop()
    log = cluster.datadir / "server.log"
    cmd = Link.ns(["runuser", "-u", "postgres", "--", c.pg_tool("pg_ctl"), "-D", str(cluster.datadir), "-l",
                   str(log), "-w", "-t", "60", "-o", f"-c listen_addresses={NS_ADDR}", "start"])
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if proc.returncode != 0:
        raise c.BenchError(f"the source cluster did not start inside netns {NS}: {proc.stderr.strip()}\n"
                           + "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:]))
    return {**c.superuser(cluster), "host": NS_ADDR}
