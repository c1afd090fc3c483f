"""The ``shoal`` command's parsing and its errors, without a worker."""

from __future__ import annotations

import errno
import os

import pytest

from shoal.cli import build_parser, main
from shoal.cli._common import describe_error
from shoal.cli._load import read_file_list
from shoal.cli._mount import mount_options, option_arg, parse_option_value


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def usage_error(capsys, *argv: str) -> str:
    """Run ``shoal argv`` expecting argparse's exit 2; its stderr."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: shoal")
    return err


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    # Nothing here may touch the user's ~/.shoal, and no test here starts a worker.
    for var in list(os.environ):
        if var.startswith("SHOAL_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))


# --------------------------------------------------------------------- parsing


def test_every_command_has_help(capsys):
    commands = ["worker", "up", "down", "ls", "stat", "cat", "load", "free", "report"]
    for argv in [[c, "--help"] for c in commands] + [
        ["mount", "add", "--help"],
        ["mount", "rm", "--help"],
        ["mount", "ls", "--help"],
        ["--help"],
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: shoal"), argv


def test_top_level_help_groups_commands_by_topic(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "daemon      worker, up, down" in out
    assert "SHOAL_DEBUG=1" in out


def test_worker_flags_grouped_by_topic(capsys):
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    out = capsys.readouterr().out
    for group in ("files:", "cache:", "cluster:"):
        assert group in out


def test_worker_flags_parse_sizes():
    args = parse(
        "worker",
        "--home",
        "/tmp/h",
        "--capacity",
        "2GiB",
        "--mem-capacity",
        "0",
        "--page-size",
        "1M",
        "--listen",
        "127.0.0.1:7000",
        "--host-id",
        "n1",
    )
    assert args.capacity == 2 << 30
    assert args.mem_capacity == 0
    assert args.page_size == 1 << 20
    assert (args.home, args.listen, args.host_id) == ("/tmp/h", "127.0.0.1:7000", "n1")
    assert args.etcd is None and args.config is None


def test_paths_are_normalised():
    assert parse("ls", "/a//b/./c/").path == "/a/b/c"
    assert parse("ls").path == "/"
    assert parse("stat", "/x").path == "/x"


def test_cat_range_accepts_sizes():
    args = parse("cat", "/m/f", "--offset", "4KiB", "--length", "1M")
    assert (args.offset, args.length) == (4096, 1 << 20)
    args = parse("cat", "/m/f")
    assert (args.offset, args.length) == (0, None)


def test_mount_add_options():
    args = parse(
        "mount",
        "add",
        "/data",
        "s3://bucket/prefix",
        "--endpoint-url",
        "http://127.0.0.1:9000",
        "--region",
        "us-east-1",
        "--access-key-env",
        "AK",
        "--secret-key-env",
        "SK",
        "--metadata-ttl",
        "2.5",
        "-o",
        "addressing_style=path",
        "-o",
        "read_ahead=8",
    )
    assert args.path == "/data" and args.uri == "s3://bucket/prefix"
    assert mount_options(args) == {
        "endpoint_url": "http://127.0.0.1:9000",
        "region": "us-east-1",
        "access_key_env": "AK",
        "secret_key_env": "SK",
        "metadata_ttl": 2.5,
        "addressing_style": "path",
        "read_ahead": 8,
    }


def test_mount_add_minimal_options():
    assert mount_options(parse("mount", "add", "/d", "file:///srv/data")) == {}
    assert mount_options(parse("mount", "add", "/d", "s3://b", "--anonymous")) == {
        "anonymous": True
    }


def test_mount_option_given_twice(capsys):
    args = parse("mount", "add", "/d", "s3://b", "--region", "r1", "-o", "region=r2")
    with pytest.raises(ValueError, match="'region' given twice"):
        mount_options(args)
    assert main(["mount", "add", "/d", "s3://b", "-o", "x=1", "-o", "x=2"]) == 1
    assert capsys.readouterr().err == "shoal: error: mount option 'x' given twice\n"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8", 8),
        ("-3", -3),
        ("2.5", 2.5),
        ("true", True),
        ("False", False),
        ("none", None),
        ("path", "path"),
        ("", ""),
        ("a=b", "a=b"),
    ],
)
def test_option_values(text, value):
    got = parse_option_value(text)
    assert got == value and type(got) is type(value)


def test_option_arg_splits_at_the_first_equals():
    assert option_arg("client_kwargs=a=b") == ("client_kwargs", "a=b")
    assert option_arg(" k =v") == ("k", "v")


def test_file_list(tmp_path):
    lines = ["# a comment\n", "\n", "  /a/b  \n", "/c//d\n"]
    assert read_file_list(lines, "list.txt") == ["/a/b", "/c/d"]
    with pytest.raises(ValueError, match=r"list\.txt, line 2: path must be absolute"):
        read_file_list(["/ok\n", "relative/path\n"], "list.txt")


# --------------------------------------------------------------------- bad usage: exit 2


def test_unknown_command(capsys):
    assert "invalid choice: 'bogus'" in usage_error(capsys, "bogus")


def test_no_command(capsys):
    assert "required: COMMAND" in usage_error(capsys)


def test_mount_needs_a_subcommand(capsys):
    assert "required: COMMAND" in usage_error(capsys, "mount")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stat"], "required: PATH"),
        (["cat"], "required: PATH"),
        (["free"], "required: PATH"),
        (["mount", "add", "/d"], "required: URI"),
        (["mount", "rm"], "required: PATH"),
    ],
)
def test_missing_arguments(capsys, argv, message):
    assert message in usage_error(capsys, *argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "--capacity", "12XB"],
        ["up", "--mem-capacity", "lots"],
        ["worker", "--page-size", "-4096"],
        ["cat", "/m/f", "--offset", "-1"],
        ["cat", "/m/f", "--length", "1.5.2M"],
    ],
)
def test_bad_sizes(capsys, argv):
    err = usage_error(capsys, *argv)
    assert "is not a size (examples: 4096, 64MiB" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ls", "relative"], "path must be absolute"),
        (["stat", "/a/../b"], "must not contain '..'"),
        (["cat", "/a\0b"], "NUL byte"),
        (["mount", "add", "data", "s3://b"], "path must be absolute"),
    ],
)
def test_bad_paths(capsys, argv, message):
    assert message in usage_error(capsys, *argv)


def test_bad_mount_flags(capsys):
    assert "expected KEY=VALUE" in usage_error(capsys, "mount", "add", "/d", "s3://b", "-o", "x")
    assert "expected KEY=VALUE" in usage_error(capsys, "mount", "add", "/d", "s3://b", "-o", "1x=2")
    assert "not a number of seconds" in usage_error(
        capsys, "mount", "add", "/d", "s3://b", "--metadata-ttl", "-1"
    )


def test_load_needs_paths_or_a_list(capsys):
    assert "nothing to load" in usage_error(capsys, "load")
    assert "not both" in usage_error(capsys, "load", "/a", "--file-list", "f")


# --------------------------------------------------------------------- runtime errors: exit 1


def test_missing_file_list(capsys, tmp_path):
    missing = tmp_path / "nope.txt"
    assert main(["load", "--file-list", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err == f"shoal: error: No such file or directory: {missing}\n"


def test_empty_file_list(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["load", "--file-list", str(empty)]) == 1
    assert capsys.readouterr().err == f"shoal: error: {empty} lists no path\n"


def test_bad_line_in_file_list(capsys, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("/ok\n../up\n")
    assert main(["load", "--file-list", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"shoal: error: {bad}, line 2: path must be absolute")
    assert "Traceback" not in err


def test_bad_configuration_names_the_field(capsys):
    assert main(["worker", "--page-size", "1000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("shoal: error: page_size must be a positive multiple of 4096")
    assert "page_size from an argument" in err
    assert err.count("\n") == 1


def test_bad_configuration_file(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("capacty: 1GiB\n")
    assert main(["up", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"shoal: error: {cfg}: unknown setting(s) capacty")


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_DEBUG", "1")
    assert main(["load", "--file-list", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith(f"shoal: error: No such file or directory: {tmp_path / 'nope'}")


def test_down_without_a_worker(capsys, tmp_path):
    home = tmp_path / "idle"
    assert main(["down", "--home", str(home)]) == 0
    assert capsys.readouterr().out == f"no worker running, home {home}\n"


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (FileNotFoundError(errno.ENOENT, "no such file", "/m/x"), "no such file: /m/x"),
        (FileNotFoundError("/x is not under any mount"), "/x is not under any mount"),
        (OSError(errno.EIO, "bad page /m/x", "/m/x"), "bad page /m/x"),
        (ValueError("offset must be >= 0"), "offset must be >= 0"),
        (KeyError("k"), "KeyError: k"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_describe_error(exc, text):
    assert describe_error(exc) == text


ETCD_FLAGS = [
    "--etcd", "https://etcd.example:2379", "--etcd-user", "shoal",
    "--etcd-password-file", "pw", "--etcd-ca", "ca.pem", "--etcd-cert", "c.pem",
    "--etcd-key", "k.pem",
]  # fmt: skip


def test_etcd_credential_flags(tmp_path, monkeypatch, capsys):
    from shoal.cli._worker import _config

    for command in ("worker", "up", "workers"):
        args = parse(command, *ETCD_FLAGS)
        assert (args.etcd_user, args.etcd_password_file, args.etcd_ca) == ("shoal", "pw", "ca.pem")
        assert (args.etcd_cert, args.etcd_key) == ("c.pem", "k.pem")
    monkeypatch.chdir(tmp_path)
    config = _config(parse("worker", "--capacity", "64MiB", "--mem-capacity", "0", *ETCD_FLAGS))
    assert config.etcd_user == "shoal"
    assert config.etcd_password_file == str(tmp_path / "pw")
    assert config.etcd_key == str(tmp_path / "k.pem")
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    security = capsys.readouterr().out.split("security:")[1]
    for flag in ("--etcd-user", "--etcd-password-file", "--etcd-ca", "--etcd-cert", "--etcd-key"):
        assert flag in security


def test_etcd_credentials_in_halves_are_refused(capsys):
    assert main(["workers", "--etcd", "http://127.0.0.1:1", "--etcd-user", "shoal"]) == 1
    assert "etcd_user and etcd_password_file go together" in capsys.readouterr().err
