"""How the box cache follows podman's events: late events about an earlier container of a
re-created box, and events from another podman sharing the event log, must not make a live box
disappear. podman here is a stand-in holding containers by id (pure cache logic; the end-to-end
tests run the real thing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from boxd import podman
from boxd.config import from_mapping
from boxd.manager import BoxManager
from boxd.model import LABEL_MANAGED, LABEL_OWNER

LABELS = {LABEL_MANAGED: "true", LABEL_OWNER: "1000"}


class Containers:
    """Just enough of PodmanClient for the event path: list and inspect, by id or name."""

    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}
        self.listing_started = asyncio.Event()
        self.finish_listing = asyncio.Event()
        self.finish_listing.set()

    def add(self, name: str, container_id: str, status: str = "running") -> None:
        self.by_id[container_id] = {"Name": name, "Id": container_id, "ImageName": "img",
                                    "State": {"Status": status},
                                    "Config": {"Labels": dict(LABELS)}}

    def remove(self, container_id: str) -> None:
        del self.by_id[container_id]

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        for data in self.by_id.values():
            if ref in (data["Id"], data["Name"]):
                return data
        raise podman.NotFound(404, f"no container with name or ID {ref!r} found")

    async def list_containers(self, labels: list[str] | None = None) -> list[dict[str, Any]]:
        snapshot = [{"Names": [d["Name"]], "Id": d["Id"], "Image": "img",
                     "State": d["State"]["Status"], "Labels": d["Config"]["Labels"]}
                    for d in self.by_id.values()]
        self.listing_started.set()
        await self.finish_listing.wait()
        return snapshot


def event(action: str, name: str, container_id: str) -> dict[str, Any]:
    return {"Type": "container", "Action": action,
            "Actor": {"ID": container_id, "Attributes": {"name": name, **LABELS}}}


@pytest.fixture
def setup(tmp_path):
    containers = Containers()
    config = from_mapping({"state_dir": str(tmp_path), "warm_sessions": 0})
    return containers, BoxManager(config, containers)  # type: ignore[arg-type]


async def test_late_events_about_an_earlier_container_leave_the_new_one(setup):
    containers, manager = setup
    containers.add("dev", "new-id")
    await manager.resync()
    # "dev" was re-created: podman's events about the old container arrive after the fact.
    for action in ("died", "cleanup", "remove"):
        await manager._on_event(event(action, "dev", "old-id"))
        assert manager.get("dev").id == "new-id", action


async def test_events_about_the_known_container_still_count(setup):
    containers, manager = setup
    containers.add("dev", "the-id")
    await manager.resync()
    containers.by_id["the-id"]["State"]["Status"] = "exited"
    await manager._on_event(event("died", "dev", "the-id"))
    assert manager.get("dev").state == "stopped"
    containers.remove("the-id")
    await manager._on_event(event("remove", "dev", "the-id"))
    assert manager.boxes() == []


async def test_a_failed_lookup_alone_does_not_make_a_box_vanish(setup):
    """podman's lookups can fail for a moment while other containers are created or removed;
    a box goes with its own "remove" event."""
    containers, manager = setup
    containers.add("dev", "the-id")
    await manager.resync()
    hidden = containers.by_id.pop("the-id")
    await manager._on_event(event("died", "dev", "the-id"))
    assert [b.name for b in manager.boxes()] == ["dev"]
    containers.by_id["the-id"] = hidden
    await manager._on_event(event("remove", "dev", "the-id"))
    assert manager.boxes() == []


async def test_another_podmans_box_is_not_adopted(setup):
    """Two podman instances that share a tmp_dir share one event log."""
    _containers, manager = setup
    await manager._on_event(event("create", "elsewhere", "foreign-id"))
    assert manager.boxes() == []


async def test_a_box_created_during_a_resync_is_kept(setup):
    containers, manager = setup
    containers.add("old", "old-id")
    await manager.resync()
    containers.finish_listing.clear()
    containers.listing_started.clear()
    resync = asyncio.create_task(manager.resync())
    await containers.listing_started.wait()
    containers.add("fresh", "fresh-id")  # boxd creates it while podman is listing
    await manager._on_event(event("create", "fresh", "fresh-id"))
    containers.finish_listing.set()
    await resync
    assert [b.name for b in manager.boxes()] == ["fresh", "old"]


async def test_events_during_a_start_leave_the_box_starting(setup):
    """start() says when a box is up (its entry point is ready); a late event's inspect from
    before the start, or from before ready, must not publish another state meanwhile."""
    containers, manager = setup
    containers.add("dev", "the-id", status="created")
    await manager.resync()
    manager._starting.add("dev")  # what start() does before it asks podman to start the box
    manager._set_state("dev", "starting")
    seen = []
    manager.observer.box_changed = lambda box, changed: seen.append(box.state)
    await manager._on_event(event("init", "dev", "the-id"))  # inspected while still "created"
    containers.by_id["the-id"]["State"]["Status"] = "running"
    await manager._on_event(event("start", "dev", "the-id"))
    assert manager.get("dev").state == "starting" and "stopped" not in seen
    manager._starting.discard("dev")
    await manager._on_event(event("start", "dev", "the-id"))
    assert manager.get("dev").state == "running"
