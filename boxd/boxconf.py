"""Renders a box's current settings as the sh file its entry point sources at every start."""

from __future__ import annotations

import shlex

from boxd import __version__
from boxd.model import BoxSettings, Owner


def render(*, name: str, hostname: str, owner: Owner, settings: BoxSettings, token: str,
           groups: tuple[tuple[str, int], ...] = ()) -> str:
    """Every value is quoted with shlex.quote: the file is code run as root in the box."""
    q = shlex.quote
    lines = [
        "# Written by boxd before every start of this box.",
        f"BOXD_NAME={q(name)}",
        f"BOXD_HOSTNAME={q(hostname)}",
        f"BOXD_USER={q(owner.user)}",
        f"BOXD_UID={owner.uid}",
        f"BOXD_GID={owner.gid}",
        f"BOXD_GROUP={q(owner.group)}",
        # The owner's host groups this box maps, "name:gid" each: the user joins them in the box.
        "BOXD_GROUPS=" + q(" ".join(f"{group}:{gid}" for group, gid in groups)),
        f"BOXD_HOME={q(settings.home or owner.home)}",
        f"BOXD_SHELL={q(owner.shell)}",
        f"BOXD_VERSION={q(__version__)}",
        f"BOXD_START_TOKEN={q(token)}",
        "boxd_apply() {",
        "    :",
    ]
    for volume in settings.volumes:
        mode = "ro" if volume.read_only else "rw"
        lines.append(f"    boxd_volume {q(volume.source)} {q(volume.destination)} {mode}")
    for key, value in sorted(settings.env.items()):
        lines.append(f"    boxd_env {q(key)} {q(value)}")
    if settings.packages:
        lines.append("    boxd_packages " + " ".join(q(p) for p in settings.packages))
    for hook in settings.hooks:
        lines.append(f"    boxd_hook {q(hook)}")
    lines.append("}")
    return "\n".join(lines) + "\n"
