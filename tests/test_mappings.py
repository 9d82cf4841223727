import pytest

from rootless_groot.errors import UsageError
from rootless_groot.mappings import IDMapping, default_mappings, newidmap_args, parse_mappings, to_host


def test_parse_and_sort():
    maps = parse_mappings(["1:100000:65536", "0:1000:1"])
    assert maps == (IDMapping(0, 1000, 1), IDMapping(1, 100000, 65536))
    assert newidmap_args(maps) == ["0", "1000", "1", "1", "100000", "65536"]


@pytest.mark.parametrize("bad", ["0:1000", "a:b:c", "0:1000:0", "-1:5:1", "0:1000:1:2", "0:4294967295:2"])
def test_bad_mappings(bad):
    with pytest.raises(UsageError):
        parse_mappings([bad])


def test_overlaps_refused():
    with pytest.raises(UsageError, match="overlap inside"):
        parse_mappings(["0:1000:10", "5:2000:10"])
    with pytest.raises(UsageError, match="overlap on the host"):
        parse_mappings(["0:1000:10", "10:1005:10"])


def test_translation():
    maps = parse_mappings(["0:1000:1", "1:100000:65536"])
    assert to_host(maps, 0) == 1000
    assert to_host(maps, 33) == 100032
    assert to_host(maps, 65534) == 165533
    assert to_host(maps, 65537) is None


def test_default_mappings_from_subuid(tmp_path):
    sub = tmp_path / "subuid"
    sub.write_text("other:1:5\nalice:200000:65536\n")
    subg = tmp_path / "subgid"
    subg.write_text("1234:300000:1000\n")  # by uid works too
    uids, gids = default_mappings(1234, 1234, str(sub), str(subg))
    # uid 1234 has no passwd entry here, so only the numeric line matches for gids
    assert uids[0] == IDMapping(0, 1234, 1)
    assert gids == (IDMapping(0, 1234, 1), IDMapping(1, 300000, 1000))


def test_single_id_without_subordinate_ids(tmp_path):
    empty = tmp_path / "none"
    empty.write_text("")
    uids, gids = default_mappings(4321, 4321, str(empty), str(empty))
    assert uids == (IDMapping(0, 4321, 1),)
    assert gids == (IDMapping(0, 4321, 1),)
