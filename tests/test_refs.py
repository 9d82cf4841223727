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
    assert parse_ref("rootfs.tar") == TarballRef(str(tmp_path / "rootfs.tar"))
    assert parse_ref("/abs/stack.tgz") == TarballRef("/abs/stack.tgz")
