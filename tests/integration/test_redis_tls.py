"""`rediss://` against a real TLS redis-server with an ACL user, configured as
docs/security.md ("Redis with ACLs and TLS") says.

The fixture makes a self-signed certificate with Debian's openssl and starts a
redis-server that only speaks TLS, has the default user off, and lets the `conveyor`
user touch only the default prefix's keys and channels, without @dangerous commands.
The client trusts the certificate through `?ssl_ca_certs=`, which Conveyor passes to
redis-py untouched.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor import ConfigError, EngineUnavailable, JobState, Worker
from tests.apps.probe import probe_app
from tests.conftest import REDIS_SERVER, free_port

OPENSSL = shutil.which("openssl")
PASSWORD = "long-random-password-for-tests"
# The ACL of docs/security.md, word for word.
ACL = ["~{conveyor}*", "~{conveyor:*", "&conveyor:*", "+@all", "-@dangerous", "+info"]


@dataclass
class TlsRedis:
    port: int
    cert: Path

    def url(self, scheme: str = "rediss", **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{scheme}://conveyor:{PASSWORD}@127.0.0.1:{self.port}/0?{params}"


def _answers_tls(port: int, cert: Path) -> bool:
    context = ssl.create_default_context(cafile=str(cert))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"PING\r\n")
            return bool(tls.recv(64))  # -NOAUTH: the default user is off
    except OSError:
        return False


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    if not (REDIS_SERVER and OPENSSL):
        pytest.fail("needs redis-server and openssl (scripts/test installs both)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            *(REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
            *("--user", "default", "off", "--user", "conveyor", "on", f">{PASSWORD}", *ACL),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers_tls(port, cert):
            assert proc.poll() is None, "redis-server exited: is it built with TLS?"
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.05)
        yield TlsRedis(port, cert)
    finally:
        proc.kill()
        proc.wait(10)


async def test_rediss_url_runs_jobs_over_verified_tls_as_an_acl_user(tls_redis: TlsRedis) -> None:
    app = probe_app(tls_redis.url(ssl_ca_certs=str(tls_redis.cert)))
    job = await app.enqueue("probe", {"action": "ok"})
    await Worker(app, queues=("probe",), burst=True).run()
    assert (await app.get_job(job.id)).state == JobState.COMPLETED
    # Events and their stream went through the ACL too (the API's live updates).
    events = await app.read_events(["probe"], since={"probe": "0"}, block_ms=0)
    assert [e.kind for e in events if e.job_id == job.id][-1] == "completed"
    await app.close()


async def test_rediss_refuses_a_certificate_it_cannot_verify(tls_redis: TlsRedis) -> None:
    # No ssl_ca_certs: the self-signed certificate is not in the system's trust store,
    # so the connection must fail rather than fall back to trusting it.
    untrusting = probe_app(tls_redis.url())
    with pytest.raises(EngineUnavailable):
        await untrusting.enqueue("probe", {})
    await untrusting.close()
    # And plain redis:// to a TLS-only port never gets an answer it could use.
    plain = probe_app(tls_redis.url("redis"))
    with pytest.raises(EngineUnavailable):
        await plain.enqueue("probe", {})
    await plain.close()


async def test_rediss_cluster_url_runs_jobs_over_tls(tmp_path: Path) -> None:
    """`rediss+cluster://` against a one-node cluster that speaks only TLS: redis-py's
    cluster client carries every call (the lane has no TLS), scripts included."""
    if not (REDIS_SERVER and OPENSSL):
        pytest.fail("needs redis-server and openssl (scripts/test installs both)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    port, bus = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *(REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
            *("--tls-cluster", "yes", "--cluster-enabled", "yes", "--cluster-port", str(bus)),
            *("--cluster-config-file", str(tmp_path / "nodes.conf")),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cli = ["redis-cli", "--tls", "--cacert", str(cert), "-p", str(port)]
    try:
        deadline = time.monotonic() + 10
        while not _answers_tls(port, cert):
            assert proc.poll() is None, "redis-server exited: is it built with TLS?"
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.05)
        subprocess.run([*cli, "CLUSTER", "ADDSLOTSRANGE", "0", "16383"], check=True, timeout=5)
        while (
            "cluster_state:ok"
            not in subprocess.run(
                [*cli, "CLUSTER", "INFO"], capture_output=True, text=True, timeout=5
            ).stdout
        ):
            assert time.monotonic() < deadline, "TLS cluster did not come up"
            time.sleep(0.05)
        url = f"rediss+cluster://127.0.0.1:{port}/?prefix=tls&ssl_ca_certs={cert}"
        app = probe_app(url)
        jobs = await app.enqueue_many(
            [{"task": "probe", "payload": {"action": "ok"}, "queue": q} for q in ("probe", "b")]
        )
        await Worker(app, queues=("probe",), burst=True).run()
        assert (await app.get_job(jobs[0].id)).state == JobState.COMPLETED
        assert (await app.get_job(jobs[1].id)).state == JobState.PENDING
        await app.close()
        with pytest.raises(ConfigError, match="rediss\\+cluster"):
            await probe_app(url + "&replicas=1").connect()
    finally:
        proc.kill()
        proc.wait(10)
