"""The test suite's network guard: no test, and no process a test starts, reaches beyond this machine.

`install()` wraps the socket calls through which Python code reaches a host, `socket.socket.connect`,
`connect_ex` and `sendto` (which every library's connections go through: urllib, http.client, requests, httpx,
asyncio) and, so that a name is never sent to a resolver, `socket.getaddrinfo` and `socket.create_connection`: for
an address of the internet families that is not this machine (loopback, or the unspecified address) they raise
`NetworkBlocked`, an OSError, as a machine without network would (ENETUNREACH; `LookupBlocked`, a
socket.gaierror, for a name). Loopback stays open (local servers, a SLURM controller on localhost) and so do the
other families (Unix sockets, netlink). Library code sees what an offline machine shows it, not a patched
function of its own.

tests/conftest.py installs it in the test process and puts this folder first on PYTHONPATH, which every process
the tests start inherits (Snakemake, its jobs, `python -c` children): there Python imports this file as
`sitecustomize` at start-up, before any other code runs, installs the guard, then runs the sitecustomize it
shadows, if the interpreter has one. Self-contained: a child may not have the repository on its path. A child
started with -S or -I (no site, or no PYTHONPATH) or with an environment of its own is not guarded; C programs
(sbatch, squeue) never were.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys

INTERNET = (socket.AF_INET, socket.AF_INET6)
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_MARK = "_resmem_network_guard"  # on the socket module while a guard is installed (installing twice is a no-op)


class NetworkBlocked(OSError):
    """A connection to another machine, refused by the test suite's network guard."""

    def __init__(self, what: str, code: int = errno.ENETUNREACH):
        super().__init__(code, f"network blocked by the test suite's guard (tests/network_guard): {what}")


class LookupBlocked(NetworkBlocked, socket.gaierror):
    """A host name looked up (a query to a resolver), refused by the test suite's network guard."""


def is_local(host) -> bool:
    """Whether a host of an address (a name, an IP literal, None) is this machine: None or "" (the local host
    for getaddrinfo and connect), localhost and its aliases, a loopback or unspecified IP (IPv4-mapped ones too)."""
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    host = str(host).strip("[]").rstrip(".").lower()
    if host == "" or host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 literal may carry a %scope
    except ValueError:
        return False  # any other name: resolving it asks a resolver, connecting to it leaves the machine
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _check(family, address, call: str) -> None:
    if family in INTERNET and isinstance(address, tuple) and address and not is_local(address[0]):
        raise NetworkBlocked(f"{call} to {address!r}")


def install():
    """Install the guard in this process; returns the function that removes it again (a no-op where a guard
    was installed already, which then stays)."""
    if getattr(socket, _MARK, False):
        return lambda: None
    cls = socket.socket
    originals = {
        (cls, "connect"): cls.connect,
        (cls, "connect_ex"): cls.connect_ex,
        (cls, "sendto"): cls.sendto,
        (socket, "create_connection"): socket.create_connection,
        (socket, "getaddrinfo"): socket.getaddrinfo,
    }
    connect, connect_ex, sendto = cls.connect, cls.connect_ex, cls.sendto
    create_connection, getaddrinfo = socket.create_connection, socket.getaddrinfo

    def guarded_connect(self, address):
        _check(self.family, address, "connect")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check(self.family, address, "connect_ex")
        return connect_ex(self, address)

    def guarded_sendto(self, data, *flags_and_address):
        _check(self.family, flags_and_address[-1] if flags_and_address else None, "sendto")
        return sendto(self, data, *flags_and_address)

    def guarded_create_connection(address, *args, **kwargs):
        _check(socket.AF_INET, address, "create_connection")
        return create_connection(address, *args, **kwargs)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not is_local(host):
            raise LookupBlocked(f"getaddrinfo of {host!r}", socket.EAI_NONAME)
        return getaddrinfo(host, *args, **kwargs)

    for (owner, name), wrapper in zip(
        originals,
        (guarded_connect, guarded_connect_ex, guarded_sendto, guarded_create_connection, guarded_getaddrinfo),
        strict=True,
    ):
        wrapper.__wrapped__ = originals[owner, name]
        setattr(owner, name, wrapper)
    setattr(socket, _MARK, True)

    def uninstall():
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
        delattr(socket, _MARK)

    return uninstall


def _run_shadowed_sitecustomize() -> None:
    """Run the interpreter's own sitecustomize, if any, which this file shadows by coming first on the path."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and spec.origin != os.path.abspath(__file__):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if __name__ == "sitecustomize":
    install()
    _run_shadowed_sitecustomize()
