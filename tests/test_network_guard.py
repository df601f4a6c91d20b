"""The suite's network guard (tests/network_guard/sitecustomize.py, installed by tests/conftest.py): another
machine cannot be reached from a test, nor from a process a test starts (a plain child, a Snakemake job), and
loopback stays open. 192.0.2.1 is TEST-NET-1 (RFC 5737), never routed: without the guard a connect would time
out or fail with the system's error, not with NetworkBlocked."""

import json
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.network_guard.sitecustomize import LookupBlocked, NetworkBlocked, is_local

PUBLIC = ("192.0.2.1", 80)


def test_connecting_to_another_machine_raises_the_guards_error():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        with pytest.raises(NetworkBlocked, match=r"network blocked .*connect to \('192\.0\.2\.1', 80\)"):
            sock.connect(PUBLIC)
        with pytest.raises(NetworkBlocked, match="connect_ex"):
            sock.connect_ex(PUBLIC)
    with pytest.raises(NetworkBlocked, match="create_connection"):
        socket.create_connection(PUBLIC, timeout=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(NetworkBlocked, match="sendto"):
        udp.sendto(b"x", PUBLIC)
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock, pytest.raises(NetworkBlocked):
        sock.connect(("2001:db8::1", 80, 0, 0))  # the IPv6 documentation prefix
    for host in ("example.com", "192.0.2.1", "::ffff:192.0.2.1"):
        with pytest.raises(LookupBlocked, match="getaddrinfo"):
            socket.getaddrinfo(host, 443)
    # What library code catches for "no network": an OSError, a name lookup's a socket.gaierror.
    assert issubclass(NetworkBlocked, OSError) and issubclass(LookupBlocked, socket.gaierror)


def test_loopback_stays_open():
    assert all(is_local(h) for h in (None, "", "localhost", "127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"))
    assert not any(is_local(h) for h in ("example.com", "192.0.2.1", "10.0.0.1", "2001:db8::1", "<broadcast>"))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def echo():
            for _ in range(2):
                conn, _ = server.accept()
                with conn:
                    conn.sendall(conn.recv(16))

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        for host in ("127.0.0.1", "localhost"):
            with socket.create_connection((host, port), timeout=5) as client:
                client.sendall(b"ping")
                assert client.recv(16) == b"ping"
        thread.join(5)
    assert socket.getaddrinfo("localhost", port)
    left, right = socket.socketpair()  # other families (here AF_UNIX) pass untouched
    with left, right:
        left.sendall(b"x")
        assert right.recv(1) == b"x"


CHILD = """
import json, socket
out = {}
try:
    socket.create_connection(("192.0.2.1", 80), timeout=2)
    out["public"] = "connected"
except OSError as exc:
    out["public"] = type(exc).__name__ + ": " + str(exc)
server = socket.create_server(("127.0.0.1", 0))
socket.create_connection(server.getsockname(), timeout=5).close()
out["loopback"] = "connected"
print(json.dumps(out))
"""


def test_a_child_process_is_guarded_too():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["public"].startswith("NetworkBlocked: ") and out["loopback"] == "connected"


def test_a_snakemake_job_is_guarded_too(tmp_path):
    """A job's script runs in its own interpreter, as the workflow's do (`script:`), started by Snakemake."""
    (tmp_path / "probe.py").write_text(
        CHILD.replace("print(json.dumps(out))", "open(snakemake.output[0], 'w').write(json.dumps(out))")
    )
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent("""
        rule probe:
            output: "probe.json"
            script: "probe.py"
        """)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(tmp_path / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "1"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads((tmp_path / "probe.json").read_text())
    assert out["public"].startswith("NetworkBlocked: ") and out["loopback"] == "connected"
