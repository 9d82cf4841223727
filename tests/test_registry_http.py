"""Transport rules: redirects and Authorization, plain HTTP, retries and Retry-After, caps."""
from __future__ import annotations

import pytest

from registry_stub import Stub
from rootless_groot.errors import ImageError
from rootless_groot.sources import registry_http
from rootless_groot.sources.registry import _content_range_ok
from rootless_groot.sources.registry_http import (
    RateLimited,
    RegistryUnreachable,
    Transport,
    host_matches,
    read_capped,
    retry_delay,
)


@pytest.fixture
def stubs():
    started = []

    def make():
        s = Stub().start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def auth_for(value="Bearer secret-token"):
    return lambda url: value


def test_host_matching():
    assert host_matches("127.0.0.1:5000", ["127.0.0.1:5000"])
    assert host_matches("127.0.0.1:5000", ["127.0.0.1"])  # a bare host covers its ports
    assert host_matches("reg.example:443", ["https://reg.example/"])
    assert not host_matches("127.0.0.1:5000", ["127.0.0.1:5001"])
    assert not host_matches("evil.example", ["example"])


def test_retry_after_is_honoured_and_capped():
    class R:
        def __init__(self, value):
            self.headers = {"Retry-After": value} if value is not None else {}

    assert retry_delay(R("3"), 0) == 3
    assert retry_delay(R("3600"), 0) == registry_http.MAX_RETRY_AFTER
    assert retry_delay(R(None), 2) == pytest.approx(registry_http.BACKOFF * 4)
    assert retry_delay(R("garbage"), 0) == pytest.approx(registry_http.BACKOFF)


def test_content_range_checks():
    assert _content_range_ok("bytes 10-99/100", 10, 100)
    assert _content_range_ok("bytes 10-99/*", 10, 100)
    assert not _content_range_ok("bytes 0-99/100", 10, 100)
    assert not _content_range_ok("bytes 10-99/200", 10, 100)
    assert not _content_range_ok("bytes 10-150/100", 10, 100)
    assert not _content_range_ok(None, 10, 100)


def test_redirect_to_another_host_drops_authorization(stubs):
    cdn, reg = stubs(), stubs()
    cdn.routes["/blob"] = (200, {}, b"payload")
    # "localhost" vs "127.0.0.1": another host for the client, the same socket for the test
    reg.routes["/v2/r/blobs/x"] = (307, {"Location": f"http://localhost:{cdn.host.split(':')[1]}/blob"}, b"")
    t = Transport(insecure=[reg.host, "localhost"])
    resp = t.request("GET", f"{reg.url}/v2/r/blobs/x", {"Range": "bytes=0-"}, auth_for=auth_for())
    assert resp.status_code == 200 and read_capped(resp, 100, "x") == b"payload"
    assert reg.log[0].headers.get("authorization") == "Bearer secret-token"
    assert "authorization" not in cdn.log[0].headers
    assert cdn.log[0].headers.get("range") == "bytes=0-"  # Range is forwarded, credentials are not


def test_same_origin_redirect_keeps_authorization(stubs):
    reg = stubs()
    reg.routes["/a"] = (302, {"Location": "/b"}, b"")
    reg.routes["/b"] = (200, {}, b"ok")
    t = Transport(insecure=[reg.host])
    t.request("GET", f"{reg.url}/a", {}, auth_for=auth_for()).close()
    assert [r.headers.get("authorization") for r in reg.log] == ["Bearer secret-token"] * 2


def test_redirect_loop_is_capped(stubs):
    reg = stubs()
    reg.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    t = Transport(insecure=[reg.host])
    with pytest.raises(ImageError, match="too many redirects"):
        t.request("GET", f"{reg.url}/loop", {})
    assert len(reg.log) == registry_http.MAX_REDIRECTS + 1


def test_plain_http_needs_insecure(stubs):
    reg = stubs()
    t = Transport()
    with pytest.raises(ImageError, match=f"--insecure-registry {reg.host}"):
        t.request("GET", f"{reg.url}/v2/", {})
    assert reg.log == []


def test_redirect_to_plain_http_is_refused_for_a_secure_host(stubs):
    reg, other = stubs(), stubs()
    reg.routes["/x"] = (307, {"Location": f"http://localhost:{other.host.split(':')[1]}/y"}, b"")
    t = Transport(insecure=[reg.host])
    with pytest.raises(ImageError, match="plain HTTP"):
        t.request("GET", f"{reg.url}/x", {})
    assert other.log == []


def test_429_then_success_honours_retry_after(stubs):
    reg = stubs()
    calls = []

    def route(req):
        calls.append(1)
        if len(calls) == 1:
            return 429, {"Retry-After": "2"}, b""
        return 200, {}, b"ok"

    reg.routes["/m"] = route
    slept = []
    t = Transport(insecure=[reg.host], sleep=slept.append)
    resp = t.request("GET", f"{reg.url}/m", {})
    assert resp.status_code == 200 and slept == [2.0]


def test_persistent_429_gives_a_rate_limit_error(stubs, monkeypatch):
    reg = stubs()
    reg.routes["/m"] = (429, {"Retry-After": "1"}, b"")
    t = Transport(insecure=[reg.host], sleep=lambda s: None)
    with pytest.raises(RateLimited, match="rate limit"):
        t.request("GET", f"{reg.url}/m", {}, what="manifest")
    assert len(reg.log) == registry_http.RETRIES + 1


def test_5xx_is_retried(stubs):
    reg = stubs()
    answers = iter([(503, {}, b""), (502, {}, b""), (200, {}, b"fine")])
    reg.routes["/m"] = lambda req: next(answers)
    t = Transport(insecure=[reg.host], sleep=lambda s: None)
    assert read_capped(t.request("GET", f"{reg.url}/m", {}), 10, "m") == b"fine"


def test_unreachable_registry_is_one_clear_error():
    t = Transport(insecure=["127.0.0.1:1"], sleep=lambda s: None)
    with pytest.raises(RegistryUnreachable, match="127.0.0.1:1 is unreachable: connection refused"):
        t.request("GET", "http://127.0.0.1:1/v2/", {})


def test_bodies_are_capped(stubs):
    reg = stubs()
    reg.routes["/big"] = (200, {}, b"x" * 5000)
    t = Transport(insecure=[reg.host])
    with pytest.raises(ImageError, match="larger than 1000"):
        read_capped(t.request("GET", f"{reg.url}/big", {}), 1000, "manifest")


def test_no_transparent_decompression(stubs):
    import gzip

    reg = stubs()
    raw = gzip.compress(b"hello")
    reg.routes["/g"] = (200, {"Content-Encoding": "gzip"}, raw)
    t = Transport(insecure=[reg.host])
    resp = t.request("GET", f"{reg.url}/g", {})
    assert read_capped(resp, 100, "g") == raw
    assert reg.log[0].headers.get("accept-encoding") == "identity"


def test_netrc_is_never_used(stubs, tmp_path, monkeypatch):
    reg = stubs()
    reg.routes["/x"] = (200, {}, b"")
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login leak password leaked\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    Transport(insecure=[reg.host]).request("GET", f"{reg.url}/x", {}).close()
    assert "authorization" not in reg.log[0].headers
