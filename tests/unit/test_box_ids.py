"""The id maps, groups and limits a box is created with (pure logic)."""

from __future__ import annotations

import resource

import pytest

from boxd import errors
from boxd.manager import held_groups
from boxd.model import IdRange, Owner, host_rlimits

OWNER = Owner(1000, 1000, "alice", "/home/alice", "/bin/bash", "alice",
              groups=(("video", 44), ("boxd", 990)))


def _covers_once(segments, size):
    seen = []
    for s in segments:
        seen.extend(range(s["container_id"], s["container_id"] + s["size"]))
    return sorted(seen) == sorted(set(seen))


def test_kept_ids_map_to_themselves_and_the_rest_to_the_range():
    segments = IdRange(2_001_000_000, 65536).mapping(1000, 44, 990, 100_000)
    by_id = {s["container_id"]: s for s in segments}
    for ident in (1000, 44, 990, 100_000):
        assert by_id[ident] == {"container_id": ident, "host_id": ident, "size": 1}
    assert by_id[0] == {"container_id": 0, "host_id": 2_001_000_000, "size": 44}
    assert _covers_once(segments, 65536)
    total = sum(s["size"] for s in segments)
    assert total == 65536 + 1  # the range, plus 100000 outside it
    assert all(s["host_id"] == 2_001_000_000 + s["container_id"]
               for s in segments if s["host_id"] != s["container_id"])


def test_a_single_kept_id_gives_three_segments():
    assert IdRange(5_000_000, 10).mapping(3) == [
        {"container_id": 0, "host_id": 5_000_000, "size": 3},
        {"container_id": 3, "host_id": 3, "size": 1},
        {"container_id": 4, "host_id": 5_000_004, "size": 6}]


def test_groups_the_owner_still_has_are_passed_by_name():
    assert held_groups((44, 990), OWNER) == (("video", 44), ("boxd", 990))
    assert held_groups((), OWNER) == ()


def test_a_mapped_group_the_owner_left_stops_the_start():
    with pytest.raises(errors.StartFailed, match="re-create"):
        held_groups((44, 27), OWNER)


def test_host_limits_come_from_pid_1_and_a_login_open_file_limit(tmp_path):
    limits = tmp_path / "limits"
    limits.write_text("Limit                     Soft Limit   Hard Limit   Units\n"
                      "Max processes             96363        96363        processes\n"
                      "Max open files            1073741816   1073741816   files\n")
    nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cap = (lambda n: n) if nproc_hard < 0 else (lambda n: min(n, nproc_hard))
    runtime = tmp_path / "runtime"
    runtime.write_text("Max processes             unlimited    unlimited    processes\n"
                       "Max open files            unlimited    unlimited    files\n")
    assert host_rlimits(str(limits), str(runtime)) == [
        {"type": "nproc", "soft": cap(96363), "hard": cap(96363)},
        {"type": "nofile", "soft": min(1024, nofile_hard), "hard": min(524288, nofile_hard)}]


def test_without_the_runtimes_limits_podman_keeps_its_own(tmp_path):
    assert host_rlimits("/proc/1/limits", str(tmp_path / "missing")) == []
    assert host_rlimits("/proc/1/limits") == []


def test_limits_stay_under_the_runtimes_hard_limits(tmp_path):
    host = tmp_path / "host"
    host.write_text("Max processes             96363        96363        processes\n"
                    "Max open files            65536        65536        files\n")
    runtime = tmp_path / "runtime"
    runtime.write_text("Max processes             32768        32768        processes\n"
                       "Max open files            20000        20000        files\n")
    nproc, nofile = host_rlimits(str(host), str(runtime))
    assert (nproc["soft"], nproc["hard"]) == (min(32768, resource.getrlimit(
        resource.RLIMIT_NPROC)[1] % 2**64),) * 2
    assert nofile["hard"] <= 20000 and nofile["soft"] <= 1024
