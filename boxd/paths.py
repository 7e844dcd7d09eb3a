"""Object paths of boxd's D-Bus objects; shared by the daemon and its light-weight client."""

BUS_NAME = "io.github.boxd1"
MANAGER_PATH = "/io/github/boxd1"
BOX_PATH_PREFIX = "/io/github/boxd1/box/"
SESSION_PATH_PREFIX = "/io/github/boxd1/session/"
JOB_PATH_PREFIX = "/io/github/boxd1/job/"


def escape_path_label(text: str) -> str:
    """Escape a name into one object-path element the way systemd does (_xx for other bytes)."""
    if not text:
        return "_"
    out = []
    for i, byte in enumerate(text.encode()):
        char = chr(byte)
        if char.isascii() and char.isalnum() and not (i == 0 and char.isdigit()):
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return "".join(out)


def box_path(name: str) -> str:
    return BOX_PATH_PREFIX + escape_path_label(name)


def unescape_path_label(label: str) -> str:
    """The inverse of escape_path_label (for messages about objects that do not exist)."""
    out = bytearray()
    i = 0
    while i < len(label):
        if label[i] == "_" and i + 2 < len(label) and _is_hex(label[i + 1:i + 3]):
            out.append(int(label[i + 1:i + 3], 16))
            i += 3
        else:
            out += label[i].encode()
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdef" for c in text)


def describe_missing(path: str) -> str:
    """One plain sentence for a call to an object that does not exist."""
    if path.startswith(BOX_PATH_PREFIX):
        return f"there is no box named {unescape_path_label(path[len(BOX_PATH_PREFIX):])!r}"
    if path.startswith(SESSION_PATH_PREFIX):
        return f"there is no session {path[len(SESSION_PATH_PREFIX):]}"
    if path.startswith(JOB_PATH_PREFIX):
        return f"there is no job {path[len(JOB_PATH_PREFIX):]}"
    return f"there is no object {path}"
