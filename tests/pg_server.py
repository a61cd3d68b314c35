"""A private PostgreSQL server on loopback for the tests (Debian's binaries; .ci/run installs them)."""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile

import psycopg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(argv):
    # the server refuses to run as root; Debian's package brings the postgres user
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@contextlib.contextmanager
def postgres_server():
    """Yields the URL prefix of a fresh server; the server and its data go away afterwards."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        raise RuntimeError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): "
                           "install Debian's postgresql package, as .ci/run does")
    bin_dir = os.path.dirname(binaries[-1])
    data = tempfile.mkdtemp(prefix="autotune-pg-")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    run = lambda argv: subprocess.run(_as_postgres(argv), check=True, capture_output=True)  # noqa: E731
    run([f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
    run([f"{bin_dir}/pg_ctl", "-D", data, "-w", "-l", f"{data}/server.log", "-o",
         f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
         "start"])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """A new empty database on the server; returns its SQLAlchemy URL."""
    dsn = server_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url}/{name}"
