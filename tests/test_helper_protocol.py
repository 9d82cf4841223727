"""The helper's request parser: strict, and never anything but HelperError("invalid") on junk."""
from __future__ import annotations

import json
import random

import pytest

from privileged_helper.protocol import MAX_REQUEST, HelperError, encode_answer, parse_request

GOOD = {"v": 1, "op": "set", "store": "s0123abc", "image": "img-1", "bytes": 10 << 20}


def req(**kw) -> bytes:
    doc = dict(GOOD)
    doc.update(kw)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def invalid(data: bytes) -> None:
    with pytest.raises(HelperError) as e:
        parse_request(data)
    assert e.value.code == "invalid"


def test_good_requests():
    assert parse_request(req()) == GOOD
    assert parse_request(req(op="get", bytes=...))["op"] == "get"
    assert parse_request(req(op="clear", bytes=...))["op"] == "clear"


@pytest.mark.parametrize("data", [
    b"", b" ", b"null", b"[]", b"1", b'"x"', b"{}",
    b"{" * 100000, b"[" * 100000 + b"]" * 100000,
    req() + b"x", req() + req(), req()[:-1],
    b"\x00" + req(), req().replace(b"img-1", b"img\\u00001"),
    b"\xff\xfe" + req(), req().replace(b"img-1", b"img\xc3\x28"),
    b'{"v":1,"v":1,"op":"get","store":"s0","image":"a"}',
    b" " * (MAX_REQUEST + 1),
])
def test_malformed(data):
    invalid(data)


@pytest.mark.parametrize("extra", ["projid", "uid", "path", "gid", "device", "inodes"])
def test_unknown_keys(extra):
    invalid(req(**{extra: 1}))


@pytest.mark.parametrize("value", [0, -1, 1.0, 1e30, 2**63, 2**64, "1", True, None, [1], {"a": 1}, 10**30])
def test_bytes_values(value):
    invalid(req(bytes=value))


def test_float_forms():
    for text in (b"1.0", b"1e3", b"NaN", b"Infinity", b"-Infinity", b"1E400", b"-0.0"):
        invalid(req().replace(b"10485760", text))


@pytest.mark.parametrize("image", ["..", ".", "", "a/b", "/etc", "/", "x" * 256, "a\nb", "\u00e9t\u00e9", "a b",
                                   ".hidden", "-rf", "a\x00b", "a\\b"])
def test_bad_image_ids(image):
    invalid(req(image=image))


@pytest.mark.parametrize("store", ["..", "", "a/b", "/etc", "S", "x" * 65, "s.json", "-s"])
def test_bad_store_names(store):
    invalid(req(store=store))


@pytest.mark.parametrize("field", ["v", "op", "store", "image"])
def test_wrong_types(field):
    invalid(req(**{field: 1 if field != "v" else "1"}))
    invalid(req(**{field: ...}))


def test_other_ops_and_versions():
    invalid(req(op="SET"))
    invalid(req(op="register"))
    invalid(req(v=2))
    invalid(req(op="get"))  # get takes no bytes


def test_fuzz_thousands_of_mutations():
    """Random byte mutations, splices and truncations of good requests: only invalid or a valid dict."""
    rng = random.Random(4)
    seeds = [req(), req(op="get", bytes=...), req(op="clear", bytes=...)]
    alphabet = b'{}[]",:0123456789.eE+-tfnul\\ \x00\xff\x80abcdefghijklmnopqrstuvwxyz/'
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            pos = rng.randrange(len(data) + 1)
            if kind < 0.4 and data:
                data[min(pos, len(data) - 1)] = rng.choice(alphabet)
            elif kind < 0.7:
                data[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
            elif kind < 0.9 and data:
                del data[pos:pos + rng.randint(1, 8)]
            else:
                data += rng.choice(seeds)
        try:
            doc = parse_request(bytes(data))
        except HelperError as e:
            assert e.code == "invalid"
            continue
        assert set(doc) <= {"v", "op", "store", "image", "bytes"} and doc["v"] == 1


def test_answers_are_uniform():
    assert HelperError("denied", "no such dir").answer() == {"ok": False, "error": "denied"}
    assert json.loads(encode_answer(HelperError("invalid", "x").answer())) == {"ok": False, "error": "invalid",
                                                                              "message": "x"}
