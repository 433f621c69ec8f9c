"""A local S3-compatible server for nsfw-scan's s3:// tests: moto's ThreadedMotoServer on 127.0.0.1.

Fake credentials, an endpoint on loopback, instance metadata lookups off: nothing leaves the machine.
:func:`s3_server` yields the environment a client (pyarrow's S3FileSystem, and so nsfw-scan and its Ray
workers, which inherit it) needs, and a filesystem that may create buckets.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from tests.helpers.appserver import free_port


@contextlib.contextmanager
def s3_server() -> Iterator[tuple[dict[str, str], Any]]:
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        admin = fs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                                endpoint_override=f"127.0.0.1:{port}", allow_bucket_creation=True)
        yield env, admin
    finally:
        server.stop()
