"""boxd/subids.py: where box owners' host ids come from, how they are recorded, registered and
checked against the host's users. Pure logic: NSS and /etc/sub[ug]id are stand-ins."""

from __future__ import annotations

import json

import pytest

from boxd import errors
from boxd.config import Config
from boxd.model import IdRange, Owner
from boxd.subids import (
    SSSD_DEFAULT_RANGE,
    Host,
    SubidAllocator,
    SubidEntry,
    collisions,
    in_sssd_range,
    parse_subids,
    register,
    register_all,
    sample_ids,
)

BASE = 2_001_000_000
SIZE = 65536


def owner(uid: int) -> Owner:
    return Owner(uid, uid, f"u{uid}", "/", "/bin/sh", f"u{uid}")


@pytest.fixture
def host(tmp_path):
    users: dict[int, str] = {}
    groups: dict[int, str] = {}
    h = Host(tmp_path / "subuid", tmp_path / "subgid", users.get, groups.get,
             lambda name: name in users.values())
    h.users, h.groups = users, groups  # type: ignore[attr-defined]
    return h


def allocator(tmp_path, host, base=BASE) -> SubidAllocator:
    return SubidAllocator(tmp_path / "subids.json", base, SIZE, host)


def test_the_default_pool_is_above_sssds_id_mapping():
    config = Config()
    assert config.subid_base == 2_001_000_000
    assert config.subid_base >= SSSD_DEFAULT_RANGE[1]
    assert not in_sssd_range(config.subid_base, config.subid_size)
    assert in_sssd_range(1_000_000_000, SIZE)  # the old default


def test_parse_skips_comments_and_malformed_lines():
    text = "# comment\n\nalice:100000:65536\nbroken\nbob:x:1\ncarol:1:0\n1005:200000:10\n"
    assert parse_subids(text) == [SubidEntry("alice", 100000, 65536),
                                  SubidEntry("1005", 200000, 10)]


def test_samples_cover_both_ends():
    ids = sample_ids(IdRange(BASE, SIZE))
    assert ids[0] == BASE and ids[-1] == BASE + SIZE - 1 and len(ids) >= 16


def test_owners_get_distinct_ranges_that_are_recorded_and_registered(tmp_path, host):
    alloc = allocator(tmp_path, host)
    a, b = alloc.range_for(owner(1000)), alloc.range_for(owner(1001))
    assert a == IdRange(BASE, SIZE) and b == IdRange(BASE + SIZE, SIZE)
    assert alloc.range_for(owner(1000)) == a
    again = allocator(tmp_path, host)
    assert again.known() == {1000: a, 1001: b}
    for path in (host.subuid, host.subgid):
        assert parse_subids(path.read_text()) == [SubidEntry("_boxd", BASE, SIZE),
                                                  SubidEntry("_boxd", BASE + SIZE, SIZE)]


def test_ranges_given_with_the_old_base_stay_where_they_were(tmp_path, host):
    """Upgrades: the first record format ({base, size, slots}) is read as the ranges it meant,
    so existing boxes (whose containers carry their maps) and the owner's new boxes agree."""
    (tmp_path / "subids.json").write_text(json.dumps(
        {"base": 1_000_000_000, "size": SIZE, "slots": {"1000": 0, "1001": 1}}))
    alloc = allocator(tmp_path, host)
    assert alloc.range_for(owner(1000)) == IdRange(1_000_000_000, SIZE)
    assert alloc.range_for(owner(1001)) == IdRange(1_000_000_000 + SIZE, SIZE)
    assert alloc.range_for(owner(1002)) == IdRange(BASE, SIZE)  # new owners: the new pool
    data = json.loads((tmp_path / "subids.json").read_text())
    assert data["ranges"]["1000"] == {"start": 1_000_000_000, "size": SIZE}


def test_an_old_record_without_a_base_meant_the_old_default(tmp_path, host):
    (tmp_path / "subids.json").write_text(json.dumps({"slots": {"7": 2}}))
    assert allocator(tmp_path, host).known() == {7: IdRange(1_000_000_000 + 2 * SIZE, SIZE)}


def test_a_new_owner_skips_ranges_holding_users_or_other_users_subids(tmp_path, host):
    host.users[BASE + SIZE - 1] = "ldap-user"     # a directory user at the first range's end
    host.subuid.write_text(f"someone:{BASE + SIZE}:10\n")  # the second is registered already
    got = allocator(tmp_path, host).range_for(owner(1000))
    assert got == IdRange(BASE + 2 * SIZE, SIZE)


def test_an_existing_range_that_now_collides_is_refused_with_a_clear_error(tmp_path, host):
    alloc = allocator(tmp_path, host)
    rng = alloc.range_for(owner(1000))
    alloc._checked.clear()  # the check is cached for a while; a restart starts afresh
    host.groups[rng.host_start + rng.size - 1] = "sssd-group"
    with pytest.raises(errors.IdCollision, match=r"gid \d+ is the group sssd-group"):
        alloc.range_for(owner(1000))
    host.groups.clear()
    host.subgid.write_text(host.subgid.read_text() + f"mallory:{rng.host_start + 10}:1\n")
    with pytest.raises(errors.IdCollision, match="to mallory"):
        alloc.range_for(owner(1000))


def test_the_owners_own_ids_and_entries_are_no_collision(tmp_path, host):
    me = Owner(BASE + 3, BASE + 3, "me", "/", "/bin/sh", "me")  # an owner inside the pool
    host.users[BASE + 3] = "me"
    host.subuid.write_text(f"me:{BASE}:{SIZE}\n{BASE + 3}:{BASE}:{SIZE}\n")
    assert collisions(IdRange(BASE, SIZE), me, host) == []


def test_a_full_pool_is_a_named_error(tmp_path, host):
    alloc = SubidAllocator(tmp_path / "subids.json", 2**32 - 2 - 2 * SIZE, SIZE, host)
    alloc.range_for(owner(1))
    alloc.range_for(owner(2))
    with pytest.raises(errors.IdCollision, match="no free host id range"):
        alloc.range_for(owner(3))


def test_register_adds_only_what_is_missing_and_keeps_the_rest(tmp_path, host):
    host.subuid.write_text("# keep me\nalice:100000:65536")
    host.subuid.chmod(0o644)
    entry = SubidEntry("bob", BASE, SIZE)
    added = register([entry], host)
    assert len(added) == 2
    assert host.subuid.read_text() == f"# keep me\nalice:100000:65536\nbob:{BASE}:{SIZE}\n"
    assert host.subuid.stat().st_mode & 0o777 == 0o644
    assert register([entry], host) == []
    assert not (tmp_path / "subuid.lock").exists()


def test_a_stale_shadow_lock_is_taken_over(tmp_path, host):
    (tmp_path / "subuid.lock").write_text("999999999")  # no such process
    assert register([SubidEntry("bob", BASE, SIZE)], host)


def test_register_all_reports_collisions_and_registers_the_rest(tmp_path, host):
    alloc = allocator(tmp_path, host)
    alloc.range_for(owner(1000))
    alloc.range_for(owner(1001))
    host.subuid.unlink()
    host.subgid.unlink()
    host.users[BASE + SIZE] = "intruder"
    added, problems = register_all(alloc, owner)
    assert added == [f"{host.subuid}: _boxd:{BASE}:{SIZE}", f"{host.subgid}: _boxd:{BASE}:{SIZE}"]
    assert len(problems) == 1 and "u1001" in problems[0] and "intruder" in problems[0]


def test_config_refuses_a_pool_past_the_last_id():
    with pytest.raises(errors.ConfigError, match="room"):
        Config(subid_base=2**32 - SIZE)


def test_ranges_are_registered_to_no_user_and_a_user_of_that_name_is_a_collision(tmp_path,
                                                                                   host):
    alloc = allocator(tmp_path, host)
    rng = alloc.range_for(owner(1000))
    assert "u1000" not in host.subuid.read_text()  # the owner's rootless podman is untouched
    alloc._checked.clear()
    host.users[5] = "_boxd"
    with pytest.raises(errors.IdCollision, match="a user named _boxd exists"):
        alloc.range_for(owner(1000))
    assert rng.host_start == BASE


def test_systemds_foreign_range_is_skipped(tmp_path, host):
    foreign = 0x7FFE0000
    base = foreign - SIZE // 2  # the first candidate overlaps it
    got = SubidAllocator(tmp_path / "subids.json", base, SIZE, host).range_for(owner(1))
    assert got.host_start >= foreign + 0x10000 or got.host_start + SIZE <= foreign
