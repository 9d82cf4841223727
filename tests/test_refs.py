import pytest

from rootless_groot.errors import UsageError
from rootless_groot.refs import DockerRef, OCILayoutRef, TarballRef, parse_ref


@pytest.mark.parametrize("text, registry, repo, tag, digest", [
    ("docker:///busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("docker://debian", "docker.io", "library/debian", "latest", None),
    ("docker://library/debian:12", "docker.io", "library/debian", "12", None),
    ("docker://user/app", "docker.io", "user/app", "latest", None),
    ("docker://127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None),
    ("docker://localhost/app", "localhost", "app", "latest", None),
    ("docker://registry-1.docker.io/library/alpine:3", "docker.io", "library/alpine", "3", None),
    ("docker://quay.io/org/img@sha256:" + "a" * 64, "quay.io", "org/img", None, "sha256:" + "a" * 64),
    ("docker://host:5000/img:tag@sha256:" + "b" * 64, "host:5000", "img", "tag", "sha256:" + "b" * 64),
])
def test_docker_refs_normalise_like_docker(text, registry, repo, tag, digest):
    ref = parse_ref(text)
    assert ref == DockerRef(registry, repo, tag, digest)


def test_docker_reference_prefers_digest():
    ref = parse_ref("docker://host:5000/img:tag@sha256:" + "b" * 64)
    assert ref.reference == "sha256:" + "b" * 64
    assert parse_ref("docker://img").reference == "latest"


@pytest.mark.parametrize("text", [
    "docker://", "docker://UPPER/case", "docker://img@sha256:short", "docker://img:bad tag",
    "docker://img@md5:" + "a" * 32, "http://example/x", "docker://a//b",
])
def test_bad_refs_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_ref(text)


def test_oci_layout_refs():
    assert parse_ref("oci:///srv/layout") == OCILayoutRef("/srv/layout", None)
    assert parse_ref("oci:///srv/layout:v2") == OCILayoutRef("/srv/layout", "v2")
    assert parse_ref("oci:///srv/my:dir/layout") == OCILayoutRef("/srv/my:dir/layout", None)
    with pytest.raises(UsageError):
        parse_ref("oci://relative/path")


def test_plain_paths_are_tarballs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_ref("rootfs.tar") == TarballRef(str(tmp_path / "rootfs.tar"), "rootfs.tar")
    assert parse_ref("/abs/stack.tgz") == TarballRef("/abs/stack.tgz", "/abs/stack.tgz")


@pytest.mark.parametrize("name, ok", [
    ("a", True), ("a0", True), ("a.b", True), ("a_b", True), ("a__b", True), ("a-b", True), ("a---b", True),
    ("a...b", False), ("a___b", False), ("a-.b", False), ("_a", False), ("a_", False), ("A", False), ("a.-b", False),
    ("a b", False), ("é", False),
])
def test_repository_components_follow_the_distribution_spec(name, ok):
    import re

    spec = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
    assert bool(spec.match(name)) == ok  # the table is right
    if ok:
        assert parse_ref(f"docker://host:5000/{name}").repository == name
    else:
        with pytest.raises(UsageError):
            parse_ref(f"docker://host:5000/{name}")


@pytest.mark.parametrize("tag, ok", [("v1", True), ("_x", True), ("1.0-rc_2", True), ("a" * 128, True),
                                     ("a" * 129, False), (".x", False), ("-x", False), ("x y", False), ("é", False)])
def test_tags_follow_the_distribution_spec(tag, ok):
    if ok:
        assert parse_ref(f"docker://img:{tag}").tag == tag
    else:
        with pytest.raises(UsageError):
            parse_ref(f"docker://img:{tag}")
