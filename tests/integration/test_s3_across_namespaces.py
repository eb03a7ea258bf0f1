"""The test harness's own S3 servers: one made inside a test network namespace (the Ray tests') leaves the
host's S3 clients working afterwards.

fsspec runs every s3fs call on one shared IO thread, which keeps the network namespace of the thread that
started it; a CI run once lost every S3 test after the Ray module that way. The scenario runs in a fresh
interpreter, where that thread is not yet started.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.ray_cluster import netns_usable
from tests.s3server import SeaweedS3

pytestmark = pytest.mark.s3

SCENARIO = textwrap.dedent(
    """
    import sys, uuid
    from pathlib import Path
    from tests.integration.ray_cluster import NetNs
    from tests.s3server import BUCKET, SeaweedS3
    from tunehouse import storage

    ns = NetNs(f"th-s3ns-{uuid.uuid4().hex[:8]}")
    try:
        with ns.entered():
            inner = SeaweedS3(Path(sys.argv[1]))
            inner.start()
            inner.filesystem().touch(f"{BUCKET}/inside")
            assert inner.filesystem().ls(BUCKET), "the namespace's server answers its own clients"
            inner.stop()
    finally:
        ns.delete()
    url = f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}/after"
    storage.write_bytes(url, b"host")
    assert storage.read_bytes(url) == b"host"
    print("host clients work")
    """
)


def test_a_server_made_in_a_test_namespace_leaves_the_hosts_s3_clients_working(
    s3_server: SeaweedS3, tmp_path: Path
) -> None:
    why = netns_usable()
    if why is not None:
        pytest.skip(why)
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(tmp_path / "inner")],
        env={
            **s3_server.env,
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": str(Path(__file__).parents[2]),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "host clients work" in done.stdout
