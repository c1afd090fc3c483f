import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal import _config as config_module
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
    assert cfg.metadata_cache == 128 * MiB
    assert load_config(environ={**env, "SHOAL_METADATA_CACHE": "1GiB"}).metadata_cache == 1 << 30


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
        ({"SHOAL_METADATA_CACHE": "0"}, "metadata_cache"),
        ({"SHOAL_METADATA_CACHE": "a lot"}, "metadata_cache"),
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


# ------------------------------------------------------------------ sizes and capacities


def filesystem_size(path) -> int:
    st_ = os.statvfs(path)
    return st_.f_blocks * st_.f_frsize


@pytest.mark.parametrize(
    "value", ["9999999999999999999999999", "1" + "0" * 400, 1 << 64, 10**30, "20000000TiB"]
)
def test_sizes_past_64_bits_are_refused(home, value):
    with pytest.raises(ValueError, match="capacity: .* does not fit in 64 bits") as info:
        load_config(environ={"SHOAL_HOME": home, "SHOAL_CAPACITY": str(value)})
    assert str(info.value).endswith("(capacity from SHOAL_CAPACITY)")
    assert len(str(info.value)) < 200  # a long number is shortened
    with pytest.raises(ValueError, match="region_size: .* does not fit in 64 bits"):
        Config(home=home, region_size=value, capacity="64MiB", mem_capacity=0)


@pytest.mark.parametrize("name", ["page_size", "chunk_size", "region_size"])
def test_units_over_a_tebibyte_are_refused(home, name):
    sizes = {"page_size": "2TiB", "chunk_size": "2TiB", "region_size": "2TiB"}
    if name == "chunk_size":
        sizes = {"page_size": "1TiB", "chunk_size": "2TiB", "region_size": "1TiB"}
    if name == "region_size":
        sizes = {"page_size": "1TiB", "chunk_size": "1TiB", "region_size": "2TiB"}
    with pytest.raises(ValueError, match=f"^{name} \\(2199023255552\\) must be at most 1 TiB"):
        Config(home=home, capacity="64MiB", mem_capacity=0, **sizes)


def test_capacity_larger_than_the_filesystem_is_refused(home, tmp_path):
    size = filesystem_size(tmp_path)
    env = {"SHOAL_HOME": home, "SHOAL_CAPACITY": str(size + 64 * MiB), "SHOAL_MEM_CAPACITY": "0"}
    with pytest.raises(ValueError) as info:
        load_config(environ=env)
    assert str(info.value) == (
        f"capacity ({size + 64 * MiB}) is larger than the filesystem that holds cache_dir "
        f"{home}/cache ({size} bytes, measured at {tmp_path}) (capacity from SHOAL_CAPACITY)"
    )
    whole = size // (64 * MiB) * 64 * MiB
    assert Config(home=home, capacity=whole, mem_capacity=0).capacity == whole
    cache = tmp_path / "elsewhere"
    cache.mkdir()
    with pytest.raises(ValueError, match=f"holds cache_dir {cache} \\({size} bytes\\)"):
        Config(home=home, cache_dir=str(cache), capacity=size + 1, mem_capacity=0)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_mem_capacity_larger_than_dev_shm_is_refused(home):
    size = filesystem_size("/dev/shm")
    with pytest.raises(ValueError) as info:
        Config(home=home, capacity="64MiB", mem_capacity=size + 1)
    cfg = Config(home=home, capacity="64MiB", mem_capacity=0)
    assert str(info.value) == (
        f"mem_capacity ({size + 1}) is larger than the filesystem that holds the MEM tier "
        f"{cfg.mem_dir} ({size} bytes, measured at /dev/shm)"
    )


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_default_mem_capacity_fits_dev_shm(home, monkeypatch):
    monkeypatch.setattr(config_module, "_ram_bytes", lambda: 1 << 50)  # RAM / 10 >> /dev/shm
    cfg = Config(home=home, capacity="64MiB")
    assert 0 < cfg.mem_capacity <= filesystem_size("/dev/shm")
    assert cfg.mem_capacity % cfg.region_size == 0


def test_more_regions_than_the_page_store_numbers_are_refused(home, monkeypatch):
    # Takes a filesystem over 16 TiB with 4 KiB regions: pretend to have one.
    monkeypatch.setattr(config_module, "_filesystem_bytes", lambda path: (1 << 60, path))
    geometry = {"page_size": 4096, "chunk_size": 4096, "region_size": 4096, "mem_capacity": 0}
    Config(home=home, capacity=(1 << 32) * 4096, **geometry)
    with pytest.raises(ValueError, match="capacity .* makes more than 4294967296 regions"):
        Config(home=home, capacity=(1 << 32) * 4096 + 4096, **geometry)


@given(capacity=st.integers(0, 1 << 70), region=st.sampled_from([4 * MiB, 64 * MiB]))
def test_capacities_are_accepted_or_refused_by_value(tmp_path_factory, capacity, region):
    home = str(tmp_path_factory.getbasetemp() / "h")
    fits = region <= capacity <= filesystem_size(tmp_path_factory.getbasetemp())
    try:
        cfg = Config(home=home, capacity=capacity, region_size=region, mem_capacity=0)
    except ValueError as exc:
        assert not fits, exc
        assert str(exc).startswith("capacity")
    else:
        assert fits and cfg.capacity == capacity


def test_etcd_credentials_are_paths_from_every_source(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {
        "SHOAL_HOME": home,
        "SHOAL_CAPACITY": "1GiB",
        "SHOAL_ETCD": "https://etcd.example:2379",
        "SHOAL_ETCD_USER": "shoal",
        "SHOAL_ETCD_PASSWORD_FILE": "etcd.password",
        "SHOAL_ETCD_CA": "ca.pem",
        "SHOAL_ETCD_CERT": "client.pem",
        "SHOAL_ETCD_KEY": "client-key.pem",
    }
    cfg = load_config(environ=env)
    assert cfg.etcd_user == "shoal"
    assert cfg.etcd_password_file == str(tmp_path / "etcd.password")
    assert (cfg.etcd_ca, cfg.etcd_cert, cfg.etcd_key) == tuple(
        str(tmp_path / name) for name in ("ca.pem", "client.pem", "client-key.pem")
    )
    cfg = load_config(environ=env, etcd_user="other", etcd_password_file="/run/pw")
    assert (cfg.etcd_user, cfg.etcd_password_file) == ("other", "/run/pw")
    assert Config(home=home, capacity="64MiB", mem_capacity=0).etcd_user is None


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"etcd_user": "shoal"}, "etcd_user and etcd_password_file go together"),
        ({"etcd_password_file": "/pw"}, "etcd_user and etcd_password_file go together"),
        ({"etcd_cert": "/c.pem"}, "etcd_cert and etcd_key go together"),
        ({"etcd_key": "/k.pem"}, "etcd_cert and etcd_key go together"),
        ({"etcd_user": " ", "etcd_password_file": "/pw"}, "etcd_user must be a non-empty"),
        ({"etcd": "http://etcd:2379", "etcd_ca": "/ca.pem"}, "etcd_ca needs an https://"),
        (
            {"etcd": "http://etcd:2379", "etcd_cert": "/c.pem", "etcd_key": "/k.pem"},
            "etcd_cert needs an https://",
        ),
    ],
)
def test_etcd_credentials_that_cannot_work_are_refused(home, settings, message):
    with pytest.raises(ValueError, match=message):
        Config(home=home, capacity="64MiB", mem_capacity=0, **settings)


def test_a_config_file_that_is_not_yaml_is_named_without_its_lines(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text('capacity: 1GiB\nnote: "s3cr3t-value-not-to-show\n')
    with pytest.raises(ValueError) as info:
        load_config(bad, home=str(tmp_path))
    message = str(info.value)
    assert f"{bad}: not valid YAML at line 3, column 1" in message
    assert "s3cr3t" not in message
