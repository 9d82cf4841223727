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


def test_layers_shared_out_by_size_in_image_order():
    from rootless_groot.sources.base import LayerDescriptor
    from rootless_groot.store.layers import _share_out

    sizes = [100, 1, 1, 90, 5, 5]
    layers = [LayerDescriptor(f"{i:064x}", None, size, None, "tar") for i, size in enumerate(sizes)]
    shares = _share_out(layers, 2)
    assert sorted(l.chain_id for share in shares for l in share) == sorted(l.chain_id for l in layers)
    for share in shares:  # each share keeps the image's order
        assert [layers.index(l) for l in share] == sorted(layers.index(l) for l in share)
    totals = sorted(sum(l.size for l in share) for share in shares)
    assert totals == [100, 102] or totals[1] - totals[0] <= 10
    assert _share_out(layers[:1], 1) == [layers[:1]]
    assert len(_share_out(layers, 8)) == 6  # no empty shares
