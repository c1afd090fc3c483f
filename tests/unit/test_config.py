import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._config import Config, load_config

MiB = 1 << 20


@pytest.fixture
def home(tmp_path):
    return str(tmp_path / "home")


def test_defaults_work_out_of_the_box(home):
    cfg = load_config(environ={"SHOAL_HOME": home})
    assert cfg.home == home
    assert cfg.cache_dir == os.path.join(home, "cache")
    assert cfg.page_size == 4 * MiB and cfg.chunk_size == 64 * MiB
    assert 0 < cfg.capacity <= 100 << 30
    assert cfg.capacity % cfg.region_size == 0
    assert cfg.etcd is None and cfg.listen is None
    tiers = cfg.tiers()
    assert tiers[-1].name == "SSD" and tiers[-1].path == cfg.cache_dir
    if os.path.isdir("/dev/shm"):
        assert tiers[0].name == "MEM" and tiers[0].path.startswith("/dev/shm/")
        assert tiers[0].capacity == cfg.mem_capacity > 0


def test_mem_dir_is_distinct_per_home(tmp_path):
    a = Config(home=str(tmp_path / "a"), capacity="64MiB", mem_capacity=0)
    b = Config(home=str(tmp_path / "b"), capacity="64MiB", mem_capacity=0)
    assert a.mem_dir != b.mem_dir
    assert [t.name for t in a.tiers()] == ["SSD"]


def test_yaml_then_env_then_arguments(home, tmp_path):
    os.makedirs(home)
    with open(os.path.join(home, "config.yaml"), "w") as f:
        f.write("page_size: 1MiB\nchunk_size: 8MiB\nhost_id: from-yaml\ncapacity: 1GiB\n")
    env = {"SHOAL_HOME": home, "SHOAL_HOST_ID": "from-env", "SHOAL_LISTEN": "127.0.0.1:0"}
    cfg = load_config(environ=env)
    assert (cfg.page_size, cfg.chunk_size, cfg.capacity) == (MiB, 8 * MiB, 1 << 30)
    assert cfg.host_id == "from-env" and cfg.listen == "127.0.0.1:0"
    cfg = load_config(environ=env, host_id="from-flag", etcd=None)
    assert cfg.host_id == "from-flag" and cfg.etcd is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SHOAL_PAGE_SIZE": "3000"}, "page_size.*SHOAL_PAGE_SIZE"),
        ({"SHOAL_PAGE_SIZE": "lots"}, "page_size"),
        ({"SHOAL_CHUNK_SIZE": "5MiB"}, "chunk_size"),
        ({"SHOAL_REGION_SIZE": "1MiB"}, "region_size"),
        ({"SHOAL_LOW_WATERMARK": "0.99"}, "low_watermark"),
        ({"SHOAL_HIGH_WATERMARK": "2"}, "high_watermark"),
        ({"SHOAL_LISTEN": "nohost"}, "listen"),
        ({"SHOAL_LISTEN": "h:99999"}, "listen"),
        ({"SHOAL_ETCD": "localhost:2379"}, "etcd"),
        ({"SHOAL_CAPACITY": "1MiB"}, "capacity.*SHOAL_CAPACITY"),
        ({"SHOAL_MEM_CAPACITY": "1MiB"}, "mem_capacity"),
    ],
)
def test_bad_environment_names_the_field_and_variable(home, env, message):
    with pytest.raises(ValueError, match=message):
        load_config(environ={"SHOAL_HOME": home, "SHOAL_CAPACITY": "1GiB", **env})


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("page_size: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad, environ={})
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad, environ={})
    bad.write_text("pagesize: 4MiB\n")
    with pytest.raises(ValueError, match="unknown setting.*pagesize"):
        load_config(bad, environ={})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ValueError, match="unknown setting"):
        load_config(environ={}, bogus=1)


@given(pages=st.integers(1, 64), per_chunk=st.integers(1, 32))
def test_valid_geometry_is_accepted(tmp_path_factory, pages, per_chunk):
    page = pages * 4096
    cfg = Config(
        home=str(tmp_path_factory.getbasetemp() / "h"),
        page_size=page,
        chunk_size=page * per_chunk,
        region_size=page * 2,
        capacity=page * 16,
        mem_capacity=0,
    )
    assert cfg.chunk_size // cfg.page_size == per_chunk
