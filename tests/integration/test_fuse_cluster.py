"""The FUSE mount over a cluster (``shoal fuse mount --etcd``): files whose pages live on
three workers read as plain files, over TCP from the workers of other hosts, and still
read when one of those workers is killed under the mount."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import yaml
from shoal_cluster import SMALL, running_cluster
from test_cluster_read import dataset

from shoal._testing import fuse_mounted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(etcd, moto_server):
    with running_cluster(etcd.endpoint, 3) as c:
        yield c


def test_a_cluster_through_fuse_and_a_worker_killed_under_it(cluster, bucket, tmp_path):
    files = dataset(bucket, "fz", 24, seed=5)
    client = cluster.client()
    # The mount's own home: on a host of its own, with the cluster's secrets.
    home = tempfile.mkdtemp(prefix="shoal-fzc-", dir="/tmp")
    try:
        client.mount("/fz", f"s3://{bucket.name}/fz", **bucket.options())
        with open(os.path.join(home, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump({**SMALL, "host_id": "fuse-host", **cluster.secrets.settings()}, f)
        mp = str(tmp_path / "mnt")
        with fuse_mounted(mp, str(tmp_path / "fuse.log"), "--etcd", cluster.etcd,
                          "--home", home):  # fmt: skip
            names = sorted(files)
            assert sorted(os.listdir(os.path.join(mp, "fz"))) == names
            for name in names[:12]:
                with open(os.path.join(mp, "fz", name), "rb") as f:
                    assert f.read() == files[name], name
            served = [cluster.report(w)["pages_sent"] for w in cluster.workers]
            assert sum(1 for s in served if s > 0) >= 2, served  # over TCP, from several
            cluster.workers[1].kill()
            # Files not read yet, some of their pages on the killed worker: no EIO.
            for name in names[12:]:
                with open(os.path.join(mp, "fz", name), "rb") as f:
                    assert f.read() == files[name], name
    finally:
        client.close()
        shutil.rmtree(home, ignore_errors=True)
