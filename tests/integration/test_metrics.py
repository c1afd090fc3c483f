"""The worker's Prometheus endpoint (``metrics_listen``): scraped over HTTP, its numbers are
``shoal report``'s, and a bad address is a clear error."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
from conftest import shoal_environment
from prometheus_client.parser import text_string_to_metric_families

from shoal import Client
from shoal._config import load_config


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of the worker's metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_are_the_reports_numbers(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 200_000)
    with shoal_environment(metrics_listen="127.0.0.1:0"):
        client = Client(load_config())
        try:
            client.mount("/d", tmp_path.as_uri())
            assert client.read_into(bytearray(200_000), "/d/f") == 200_000
            client.read_into(bytearray(200_000), "/d/f")
            before = client.report()
            address = before["worker"]["metrics"]
            assert address.startswith("127.0.0.1:") and not address.endswith(":0")
            got = scrape(address)
            after = client.report()
            for name, field in (
                ("shoal_page_hits_total", "page_hits"),
                ("shoal_page_misses_total", "page_misses"),
                ("shoal_ufs_read_bytes_total", "ufs_bytes"),
                ("shoal_ufs_reads_total", "ufs_reads"),
            ):
                assert before[field] <= got[name, ()] <= after[field], name
            assert got["shoal_ufs_read_bytes_total", ()] == 200_000
            # The scrape's own report counts as a request; reports count between them.
            assert before["requests"] <= got["shoal_requests_total", ()] <= after["requests"]
            served = got["shoal_pages_served_total", (("path", "short_circuit"),)]
            assert served == before["pages_located"] > 0
            tier = (("tier", "SSD"),)
            assert got["shoal_tier_capacity_bytes", tier] == before["tiers"]["SSD"]["capacity"]
            assert got["shoal_tier_live_bytes", tier] == before["tiers"]["SSD"]["live_bytes"]
            assert got["shoal_tier_filled_bytes", tier] == before["tiers"]["SSD"]["filled_bytes"]
            assert got["shoal_published_files", ()] == before["published"]["files"]
            assert got["shoal_file_requests_total", ()] == before["file_requests"] > 0
            assert got["shoal_tier_state", (("state", "normal"), ("tier", "SSD"))] == 1
            assert got["shoal_tier_state", (("state", "down"), ("tier", "SSD"))] == 0
            kinds = {k for (n, labels), v in got.items() if n == "shoal_ufs_requests_total"
                     for key, k in labels if key == "kind" and v > 0}  # fmt: skip
            assert kinds and kinds <= {"GET", "HEAD", "LIST"}
            assert got["shoal_mounts", ()] == 1
            # shoal report names the endpoint.
            shown = subprocess.run([sys.executable, "-m", "shoal", "report"],
                                   capture_output=True, text=True, check=True)  # fmt: skip
            assert f"http://{address}/metrics" in shown.stdout
        finally:
            client.close()


def test_no_metrics_unless_asked(client):
    assert client.report()["worker"]["metrics"] is None


@pytest.mark.parametrize("bad", ["localhost", "127.0.0.1:99999", ":80", "host:port"])
def test_a_bad_metrics_address_names_the_setting(bad, monkeypatch):
    monkeypatch.setenv("SHOAL_METRICS_LISTEN", bad)
    with pytest.raises(ValueError, match="metrics_listen must be HOST:PORT"):
        load_config()


def test_a_metrics_address_in_use_is_one_line_in_the_error():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with shoal_environment(metrics_listen=f"127.0.0.1:{port}"):
            client = Client(load_config(), start_timeout=30)
            try:
                with pytest.raises(ConnectionError, match="exited during start-up") as info:
                    client.report()
            finally:
                client.close()
    message = str(info.value)
    assert f"worker failed: cannot serve metrics on 127.0.0.1:{port}: " in message
    assert "Traceback" not in message
