"""The mount policy: URIs under the operator's prefixes only, credentials by reference only
from the variables and the directory the operator lists, literal options only where they
cannot be secrets; no message repeats a refused value."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._config import DEFAULT_ALLOWED_MOUNTS, Config
from shoal.control._admission import HIDDEN, MountPolicy
from shoal.control._files import FileResolver
from shoal.control._metastore import LocalMetaStore
from shoal.control._metrics import Counters
from shoal.control._namespace import Mount, MountTable
from shoal.control.ufs import FsspecStore, LocalStore, S3Config, S3Store
from shoal.control.ufs._options import is_env_option

# A root no test machine has: symbolic links cannot change what these paths resolve to.
ROOT = "/nonexistent-shoal-admission"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

name = st.text(alphabet="abcxyz019-_", min_size=1, max_size=8)
# Characters that may follow a prefix's last name without a "/": a sibling, not a child.
sibling_tail = st.text(alphabet="abc019-_.~", min_size=1, max_size=4)
env_name = st.from_regex(r"(AWS_|TEAM_A_KEY|TEAM_|ZQ)[A-Z0-9_]{3,12}", fullmatch=True)
# Distinctive values: a refusal that repeated one would show it.
secret_value = st.from_regex(r"[a-z]{3}-[A-Za-z0-9+/=]{12,24}", fullmatch=True)


def refusal(policy: MountPolicy, uri: str, options: dict | None = None) -> BaseException:
    with pytest.raises((PermissionError, ValueError)) as info:
        policy.check(uri, options or {})
    if isinstance(info.value, PermissionError):
        assert info.value.errno == errno.EACCES
    return info.value


# --------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    "uri",
    ["file:///etc", "/etc", "file://localhost/etc", "http://127.0.0.1:8080/", "https://x/",
     "memory://x", "hdfs://namenode/data", "FILE:///etc", "Http://127.0.0.1/"],
)  # fmt: skip
def test_the_default_refuses_local_files_and_web_servers(uri):
    err = refusal(MountPolicy(), uri)
    assert isinstance(err, PermissionError) and "allowed_mounts" in str(err)


@pytest.mark.parametrize(
    "uri", ["s3://bucket", "s3://bucket/prefix/", "S3://bucket/x", "gs://b", "gcs://b/x",
            "abfs://container/dir", "az://container"],
)  # fmt: skip
def test_the_default_admits_object_stores(uri):
    MountPolicy().check(uri, {})


@given(st.lists(name, min_size=1, max_size=4), st.lists(name, max_size=3), st.booleans())
def test_a_file_prefix_admits_what_lies_beneath_it(parts, below, slash):
    base = ROOT + "/" + "/".join(parts)
    policy = MountPolicy(["file://" + base + ("/" if slash else "")])
    for uri in (base, "file://" + base, "file://" + "/".join([base, *below]), base + "/./"):
        policy.check(uri, {})


@given(st.lists(name, min_size=1, max_size=4), sibling_tail, st.lists(name, max_size=2))
def test_a_file_prefix_admits_no_sibling(parts, tail, below):
    base = ROOT + "/" + "/".join(parts)
    policy = MountPolicy(["file://" + base + "/"])
    sibling = "/".join([base + tail, *below])
    for uri in (sibling, "file://" + sibling):
        assert isinstance(refusal(policy, uri), PermissionError)


@given(
    st.lists(name, min_size=1, max_size=3),
    st.sampled_from(["..", "%2e%2e", "%2E%2e", ".%2e"]),
    st.lists(name, min_size=1, max_size=3),
)
def test_no_dot_dot_climbs_out_of_a_prefix(parts, dots, rest):
    base = ROOT + "/" + "/".join(parts)
    policy = MountPolicy(["file://" + base + "/", "s3://bucket/" + "/".join(parts) + "/"])
    for uri in (
        f"file://{base}/{dots}/{'/'.join(rest)}",
        f"file://{base}/./{dots}/etc",
        f"s3://bucket/{'/'.join(parts)}/{dots}/{'/'.join(rest)}",
    ):
        refusal(policy, uri)
    if dots == "..":  # a bare path is not percent-decoded, as the local store takes it
        refusal(policy, f"{base}/../{'/'.join(rest)}")


@given(name, st.lists(name, max_size=3), sibling_tail, st.sampled_from(["s3", "gs", "abfs"]))
def test_an_object_store_prefix_matches_whole_names(bucket, below, tail, scheme):
    policy = MountPolicy([f"{scheme}://{bucket}/"])
    policy.check(f"{scheme}://{bucket}", {})
    policy.check(f"{scheme.upper()}://{'/'.join([bucket, *below])}", {})
    assert isinstance(refusal(policy, f"{scheme}://{bucket}{tail}/x"), PermissionError)
    refusal(policy, f"file:///{bucket}")


def test_a_prefix_without_a_slash_is_a_whole_name_too():
    policy = MountPolicy(["s3://bucket/data", "file:///srv/data"])
    policy.check("s3://bucket/data/x", {})
    policy.check("file:///srv/data/x", {})
    refusal(policy, "s3://bucket/data-2/x")
    refusal(policy, "file:///srv/data-2")


def test_a_bare_directory_is_a_file_uri():
    policy = MountPolicy(["/srv/data"])
    policy.check("file:///srv/data/x", {})
    policy.check("/srv/data/x", {})
    refusal(policy, "/srv/database")


def test_an_authority_with_userinfo_needs_a_prefix_that_names_it():
    refusal(MountPolicy(), "abfs://container@evil.example/x")
    MountPolicy(["abfs://c@acct.blob.core.windows.net/"]).check(
        "abfs://c@acct.blob.core.windows.net/x", {}
    )


@pytest.mark.parametrize(
    "uri",
    ["relative/dir", "", "file://otherhost/data", "file:///data?x=1", "/data/\0x", "s3:bucket"],
)
def test_malformed_uris_are_value_errors(uri):
    with pytest.raises(ValueError):
        MountPolicy(["file:///", "s3://"]).check(uri, {})


def test_a_symbolic_link_out_of_a_prefix_is_refused(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "real").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (allowed / "out").symlink_to(tmp_path / "outside")
    (allowed / "in").symlink_to(allowed / "real")
    policy = MountPolicy([allowed.as_uri() + "/"])
    policy.check((allowed / "in").as_uri(), {})
    err = refusal(policy, (allowed / "out").as_uri())
    assert isinstance(err, PermissionError) and "symbolic link" in str(err)
    refusal(policy, str(allowed / "out" / "deeper"))


# --------------------------------------------------------------------- credentials


@given(env_name)
def test_variables_must_match_credential_env(variable):
    policy = MountPolicy(["s3://"], credential_env=["AWS_*", "TEAM_A_KEY"])
    options = {"access_key_env": variable, "secret_key_env": "AWS_SECRET_ACCESS_KEY"}
    if variable.startswith("AWS_"):
        policy.check("s3://b", options)
        return
    err = refusal(policy, "s3://b", options)
    assert isinstance(err, PermissionError) and "'access_key_env'" in str(err)
    assert variable not in str(err).replace("AWS_*", "").replace("TEAM_A_KEY", "")


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("s3://b/", {"access_key_env": "DB_PASSWORD", "secret_key_env": "AWS_SECRET_ACCESS_KEY"}),
        ("s3://b/", {"access_key_env": "aws_lower", "secret_key_env": "AWS_S"}),
        ("gs://b/", {"token_env": "GOOGLE_TOKEN"}),
        ("abfs://c/", {"connection_string_env": "AZURE_STORAGE_CONNECTION_STRING"}),
    ],
)
def test_the_default_names_only_aws_variables(uri, options):
    err = refusal(MountPolicy(), uri, options)
    assert isinstance(err, PermissionError)
    for value in options.values():
        assert value not in str(err)


def test_a_key_where_a_variable_name_belongs_is_not_repeated():
    err = refusal(MountPolicy(), "s3://b", {"access_key_env": "AKIAIOSFODNN7EXAMPLE"})
    assert isinstance(err, ValueError) and "AKIAIOSFODNN7EXAMPLE" not in str(err)


def test_credential_files_only_beneath_credential_dir(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "team.ini").write_text("[default]\n")
    (tmp_path / "elsewhere.ini").write_text("[default]\n")
    (creds / "link.ini").symlink_to(tmp_path / "elsewhere.ini")
    (creds / "inner.ini").symlink_to(creds / "team.ini")
    policy = MountPolicy(["s3://"], credential_dir=str(creds))
    policy.check("s3://b", {"credentials_file": str(creds / "team.ini")})
    policy.check("s3://b", {"credentials_file": str(creds / "inner.ini"), "profile": "p"})
    for path, exc in [
        (tmp_path / "elsewhere.ini", PermissionError),
        (creds / "link.ini", PermissionError),
        ("/etc/shadow", PermissionError),
        (f"{creds}/../elsewhere.ini", ValueError),
        ("creds/team.ini", ValueError),
    ]:
        err = refusal(policy, "s3://b", {"credentials_file": str(path)})
        assert isinstance(err, exc), (path, err)
        assert "'credentials_file'" in str(err)
        assert str(path) not in str(err) or str(path) == str(creds)
    err = refusal(MountPolicy(), "s3://b", {"credentials_file": str(creds / "team.ini")})
    assert isinstance(err, PermissionError) and "credential_dir is not set" in str(err)


# --------------------------------------------------------------------- literal options


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        (
            "abfs://c/x",
            {"connection_string": "DefaultEndpointsProtocol=https;AccountKey=" + SECRET},
        ),
        ("az://c/x", {"account_key": SECRET}),
        ("abfs://c/x", {"account_host": "evil.example"}),
        ("gs://b/x", {"headers": {"Authorization": "Bearer " + SECRET}}),
        ("gs://b/x", {"endpoint_url": "http://127.0.0.1:1/"}),
        ("gs://b/x", {"client_kwargs": {"x": SECRET}}),
        ("s3://b/x", {"aws_secret_access_key": SECRET}),
        ("s3://b/x", {"session_token": SECRET}),
        ("s3://b/x", {"sse_customer_key": SECRET}),
    ],
)
def test_literal_options_off_the_store_list_are_refused(uri, options):
    err = refusal(MountPolicy(), uri, options)
    assert isinstance(err, ValueError)
    (key,) = options
    assert repr(key) in str(err) and SECRET not in str(err)


@given(
    st.sampled_from(["s3://b", "gs://b", "abfs://c", "file:///srv"]),
    st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True),
    secret_value,
)
def test_no_refusal_repeats_a_value(uri, key, value):
    policy = MountPolicy([*DEFAULT_ALLOWED_MOUNTS, "file:///srv/"])
    try:
        policy.check(uri, {key: value})
    except (PermissionError, ValueError) as exc:
        assert value not in str(exc)


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("s3://b", {"endpoint_url": "http://127.0.0.1:9000", "region": "us-east-1",
                    "addressing_style": "path", "profile": "team", "anonymous": False,
                    "part_size": "16MiB", "retry": {"max_attempts": 2}}),
        ("gs://b", {"project": "p", "requester_pays": True, "token_env": "AWS_GCS_TOKEN"}),
        ("abfs://c", {"account_name": "acct", "anon": True}),
        ("file:///srv/x", {"fsync": False}),
        ("s3://b", {"metadata_ttl": 5, "read_ahead": 2, "replicas": "all"}),
    ],
)  # fmt: skip
def test_options_on_the_store_list_pass(uri, options):
    MountPolicy([*DEFAULT_ALLOWED_MOUNTS, "file:///srv/"]).check(uri, options)


def test_every_s3_option_is_listed_once():
    fields = {f.name for f in dataclasses.fields(S3Config)}
    env = {f for f in fields if is_env_option(f)}
    assert S3Store.public_options | S3Store.credential_file_options | env == fields
    assert not S3Store.public_options & S3Store.credential_file_options
    assert not env & (S3Store.public_options | S3Store.credential_file_options)


def test_lists_per_store():
    assert LocalStore.literal_options("file") == {"fsync", "retry"}
    assert FsspecStore.literal_options("memory") == {"retry"}
    assert FsspecStore.literal_options("http") == {"retry"}
    assert "project" in FsspecStore.literal_options("GS")
    assert "account_name" in FsspecStore.literal_options("az")
    for scheme in ("gs", "gcs", "abfs", "az"):
        public = FsspecStore.literal_options(scheme)
        assert not {"endpoint_url", "account_host", "token", "credential", "client_kwargs"} & public


@pytest.mark.parametrize("field", ["access_key_env", "session_token_env"])
@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "MY_PRIVATE_KEY"])
def test_s3_sends_no_secret_variable_in_the_clear(field, variable):
    options = {"access_key_env": "AWS_ACCESS_KEY_ID", "secret_key_env": "AWS_SECRET_ACCESS_KEY"}
    options[field] = variable
    with pytest.raises(ValueError, match=field) as info:
        S3Config(**options)
    assert variable not in str(info.value)


# --------------------------------------------------------------------- listings and use


def test_from_config(tmp_path):
    config = Config(
        home=str(tmp_path), capacity=1 << 26, mem_capacity=0,
        allowed_mounts=["file:///srv/"], credential_env=["TEAM_*"], credential_dir=str(tmp_path),
    )  # fmt: skip
    policy = MountPolicy.from_config(config)
    assert policy.allowed_mounts == ("file:///srv/",)
    assert policy.credential_env == ("TEAM_*",) and policy.credential_dir == str(tmp_path)
    assert "file:///srv/" in repr(policy)


def test_shown_hides_what_check_would_refuse():
    mount = Mount(
        "/old",
        "abfs://c/x",
        {
            "connection_string": "AccountKey=" + SECRET,
            "headers": {"Authorization": "Bearer " + SECRET},
            "account_key_env": "AKIAIOSFODNN7EXAMPLE0",
            "token_env": "AZURE_TOKEN",
            "account_name": "acct",
            "metadata_ttl": 5,
        },
    )
    shown = MountPolicy().shown(mount)
    assert dict(shown.options) == {
        "connection_string": HIDDEN,
        "headers": HIDDEN,
        "account_key_env": HIDDEN,
        "token_env": "AZURE_TOKEN",
        "account_name": "acct",
        "metadata_ttl": 5,
    }
    assert MountPolicy().shown(Mount("/u", "nosuch://x", {"a": 1})).options["a"] == HIDDEN
    assert MountPolicy().shown(Mount("/q", "s3://b/x?sig=" + SECRET, {})).uri == "s3://b/x?***"


@pytest.fixture
def resolver(tmp_path):
    """A FileResolver over a table that already holds a mount of ``tmp_path/src`` and one
    with a literal secret, as an older worker (or another one) could have stored them;
    its policy admits neither."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data")
    meta = LocalMetaStore(tmp_path / "meta")
    table = MountTable(meta)
    table.mount("/d", (tmp_path / "src").as_uri())
    table.mount("/leak", "s3://bucket", connection_string="AccountKey=" + SECRET)
    files = FileResolver(table, shared=False, counters=Counters(), policy=MountPolicy())
    yield files
    files.close()
    meta.close()


def test_a_stale_mount_is_refused_at_use_and_logged_once(resolver, caplog):
    with caplog.at_level(logging.WARNING, logger="shoal.worker"):
        for _ in range(3):
            with pytest.raises(PermissionError, match="mount /d: .*allowed_mounts") as info:
                resolver.file("/d/f")
            assert info.value.errno == errno.EACCES
            assert "shoal mount rm /d" in str(info.value)
        with pytest.raises(PermissionError, match="mount /d"):
            resolver.file("/d")  # the mount point's own record carries its options
        with pytest.raises(ValueError, match="'connection_string'") as info:
            resolver.file("/leak/x")
        assert SECRET not in str(info.value)
    refused = [r.getMessage() for r in caplog.records if "refused at use" in r.getMessage()]
    assert len(refused) == 2, refused
    assert not any(SECRET in r.getMessage() for r in caplog.records)
    shown = {m.path: dict(m.options) for m in resolver.mounts()}
    assert shown == {"/d": {}, "/leak": {"connection_string": HIDDEN}}


def test_a_refused_mount_is_neither_stored_nor_logged_with_its_value(resolver, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="shoal.worker"):
        with pytest.raises(PermissionError):
            resolver.mount("/etc", "file:///etc", {})
        with pytest.raises(ValueError):
            resolver.mount("/x", "gs://b", {"headers": {"Authorization": "Bearer " + SECRET}})
        with pytest.raises(PermissionError):
            resolver.mount("/y", "s3://b", {"access_key_env": "DB_PASSWORD", "secret_key_env": "A"})
    assert [m.path for m in resolver.mounts()] == ["/d", "/leak"]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert len(caplog.records) == 3 and all("refused" in r.getMessage() for r in caplog.records)
    assert SECRET not in text and "DB_PASSWORD" not in text
    assert os.path.isdir(tmp_path / "src")
