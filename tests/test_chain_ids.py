import hashlib

import pytest

from rootless_groot.digests import chain_ids, check_digest
from rootless_groot.errors import ImageError
from rootless_groot.store.gc import unused_layers

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def test_chain_ids_like_grootfs():
    first, second = chain_ids([A, B])
    assert first == "a" * 64
    assert second == hashlib.sha256(("a" * 64 + " " + "b" * 64).encode()).hexdigest()
    # a chain ID depends on every layer below it
    assert chain_ids([B, B])[1] != second


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "../etc", None, 5])
def test_bad_digests(bad):
    with pytest.raises(ImageError):
        check_digest(bad)


def test_gc_keeps_layers_any_image_uses():
    assert unused_layers({"a", "b", "c", "d"}, [["a", "b"], ["b", "c"]]) == {"d"}
    assert unused_layers({"a"}, []) == {"a"}
    assert unused_layers(set(), [["a"]]) == set()
