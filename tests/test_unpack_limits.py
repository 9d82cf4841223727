import io
import os
import tarfile

import pytest

from rootless_groot.errors import QuotaError
from rootless_groot.layers.pipeline import unpack_blob


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_layer_that_cannot_fit_the_disk_limit_stops_at_the_header_that_says_so(tmp_path):
    blob = tar_of({"small": b"x" * 600, "big": b"y" * 5000, "after": b"z"})
    with pytest.raises(QuotaError, match="uncompressed layer size exceeds quota"):
        unpack_blob(io.BytesIO(blob), str(tmp_path), digest=None, size=None, diff_id=None, chown=False,
                    what="layer x", max_size=4096)
    assert os.listdir(tmp_path) == ["small"]  # "big" was never written, nothing after it read


def test_within_the_limit_unpacks(tmp_path):
    blob = tar_of({"a": b"x" * 600, "b": b"y" * 400})
    result = unpack_blob(io.BytesIO(blob), str(tmp_path), digest=None, size=None, diff_id=None, chown=False,
                         what="layer x", max_size=1000)
    assert result.size == 1000 and sorted(os.listdir(tmp_path)) == ["a", "b"]
