import json

import pytest

from rootless_groot import fastjson

DOCS = [
    {"a": 1, "b": [1, 2.5, "x", None, True, False], "c": {"d": "é\u2028\n\"\\"}},
    [], {}, "s", 0, -12, 1e300, [{"x": [[]]}],
]


@pytest.mark.parametrize("doc", DOCS)
def test_round_trip_matches_json(doc):
    text = fastjson.dumps(doc)
    assert text == json.dumps(doc, separators=(",", ":"))
    assert fastjson.loads(text) == doc
    assert fastjson.loads(" \n" + json.dumps(doc, indent=2) + "\n ") == doc
    assert fastjson.loads(text.encode()) == doc


@pytest.mark.parametrize("bad", ["", "   ", "{", '{"a":1} x', "[1,]", "NaN", "[Infinity]", '{"a":-Infinity}',
                                 "{'a': 1}", '"\\x"', "01"])
def test_malformed_is_value_error(bad):
    with pytest.raises(ValueError):
        fastjson.loads(bad)


def test_pairs_hook_sees_duplicates():
    seen = []
    fastjson.loads('{"a":1,"a":2}', object_pairs_hook=lambda pairs: seen.append(pairs) or dict(pairs))
    assert seen == [[("a", 1), ("a", 2)]]


def test_refuses_what_json_cannot_encode():
    with pytest.raises(TypeError):
        fastjson.dumps({"x": object()})
    with pytest.raises(ValueError):
        fastjson.dumps(float("nan"))


@pytest.mark.parametrize("bad", ["{", '{"a": }', "[1,", '{"a":1} x', "nul"])
def test_malformed_is_value_error_even_before_json_is_imported(bad):
    """_json raises its errors through json.decoder, found only if something imported it."""
    import subprocess
    import sys

    code = ("import sys\nfrom rootless_groot import fastjson\nassert 'json.decoder' not in sys.modules\n"
            "try:\n    fastjson.loads(sys.argv[1])\nexcept ValueError as e:\n    print('ValueError')\n")
    r = subprocess.run([sys.executable, "-c", code, bad], capture_output=True, text=True)
    assert r.stdout == "ValueError\n", r.stderr
