"""A private two-host network for fault tests: a server and a client namespace on a veth pair.

Everything lives in network namespaces this module creates: each namespace holds only its
loopback and one end of a veth pair, with addresses assigned here (10.213.N.1 for the server,
10.213.N.2 for the client, a /30), and no route anywhere else, so no traffic can leave them.
A silent cut replaces both ends' neighbour entries with bogus permanent MAC addresses: frames
still go out, the peer drops them, nobody sends a reset (what a dead switch or a pulled cable
looks like to TCP). :meth:`NetPair.restore` puts the real addresses back.

Also: :class:`NsServer`, a throwaway PostgreSQL inside the server namespace, reachable from the
test process through its Unix socket; and :func:`freeze`, SIGSTOP/SIGCONT of a server's processes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

#: Server-side keepalives for the fault servers: a backend whose client vanished in a cut is
#: reaped within seconds (the server's own defaults keep it for two hours: see
#: docs/failure-modes.md). Set on the server, as in production.
SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "5000",
}

_BOGUS_MAC = {"srv": "02:00:5e:00:53:01", "cli": "02:00:5e:00:53:02"}


def unavailable_reason() -> str | None:
    """Why namespaces can't be used here (None if they can): tests skip with this reason."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespace fault tests need root (ip netns add)"
    if shutil.which("ip") is None:
        return "network namespace fault tests need iproute2's `ip` command"
    probe = f"pp-probe-{secrets.token_hex(3)}"
    try:
        result = subprocess.run(
            ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    if result.returncode != 0:
        return f"network namespaces are not allowed here: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class NetPair:
    """Two namespaces joined by a veth pair; see the module docstring. Use as a context manager."""

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.server_ns = f"pp-srv-{token}"
        self.client_ns = f"pp-cli-{token}"
        subnet = int(token, 16) % 250 + 1
        self.server_ip = f"10.213.{subnet}.1"
        self.client_ip = f"10.213.{subnet}.2"
        self._dev = {"srv": f"pps{token}", "cli": f"ppc{token}"}
        self._ns = {"srv": self.server_ns, "cli": self.client_ns}
        self._mac: dict[str, str] = {}
        self._created: list[str] = []
        self.is_cut = False

    def __enter__(self) -> NetPair:
        try:
            self._create()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _create(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            _ip("netns", "add", ns)
            self._created.append(ns)
        srv, cli = self._dev["srv"], self._dev["cli"]
        # Made inside the server namespace, then one end moved: nothing touches the host's links.
        _ip("-n", self.server_ns, "link", "add", srv, "type", "veth", "peer", "name", cli)
        _ip("-n", self.server_ns, "link", "set", cli, "netns", self.client_ns)
        for side, ip in (("srv", self.server_ip), ("cli", self.client_ip)):
            ns, dev = self._ns[side], self._dev[side]
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            self._mac[side] = _ip("-n", ns, "-br", "link", "show", dev).split()[2]

    def exec_prefix(self, side: str) -> tuple[str, ...]:
        """``ip netns exec`` for the "srv" or "cli" namespace."""
        return ("ip", "netns", "exec", self._ns[side])

    def _set_neighbours(self, macs: dict[str, str]) -> None:
        # Each side's entry for its peer's address.
        for side, peer, peer_ip in (
            ("srv", "cli", self.client_ip),
            ("cli", "srv", self.server_ip),
        ):
            _ip(
                "-n", self._ns[side], "neigh", "replace", peer_ip,
                "lladdr", macs[peer], "dev", self._dev[side], "nud", "permanent",
            )  # fmt: skip

    def cut(self) -> None:
        """Silently drop every packet both ways (bogus permanent neighbour entries)."""
        self._set_neighbours(_BOGUS_MAC)
        self.is_cut = True

    def restore(self) -> None:
        """Deliver packets again (the real neighbour addresses)."""
        self._set_neighbours(self._mac)
        self.is_cut = False

    def cleanup(self) -> None:
        """Delete both namespaces (their veth ends go with them). Safe to call twice."""
        while self._created:
            ns = self._created.pop()
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


class NsServer:
    """A throwaway PostgreSQL listening on ``net.server_ip`` inside the server namespace."""

    def __init__(self, net: NetPair, *, settings: dict[str, str] | None = None) -> None:
        from psycopool._server import TempServer

        self.server = TempServer(
            host=net.server_ip,
            prefix=net.exec_prefix("srv"),
            settings={**SERVER_KEEPALIVES, **(settings or {})},
            max_connections=50,
        )
        self.client_ip = net.client_ip

    def __enter__(self) -> NsServer:
        try:
            self.server.start()
            # initdb trusts loopback only: trust the client namespace's address too, then reload.
            with open(self.server.data_dir / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.client_ip}/32 trust\n")
            os.kill(server_pids(self.server.data_dir)[0], signal.SIGHUP)
            time.sleep(0.2)  # the postmaster rereads pg_hba.conf asynchronously
        except BaseException:
            self.server.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.cleanup()


def server_pids(data_dir: Path) -> list[int]:
    """The postmaster's pid and its children's (backends, checkpointer, ...)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == postmaster:
            pids.append(int(entry))
    return pids


@contextlib.contextmanager
def frozen(data_dir: Path) -> Iterator[list[int]]:
    """SIGSTOP every process of the server for the ``with`` block; SIGCONT even on failure."""
    pids = server_pids(data_dir)
    stopped: list[int] = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield stopped
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
