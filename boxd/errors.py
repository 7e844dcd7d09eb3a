"""Domain errors. Each carries a short code, which the D-Bus layer turns into
io.github.boxd1.Error.<code>.

Messages are one plain sentence meant for the person at the other end.
"""

from __future__ import annotations


class BoxdError(Exception):
    code = "Failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(BoxdError):
    code = "InvalidArgument"


class NotFound(BoxdError):
    code = "NotFound"


class AlreadyExists(BoxdError):
    code = "AlreadyExists"


class ImageNotFound(BoxdError):
    code = "ImageNotFound"


class PodmanUnavailable(BoxdError):
    code = "PodmanUnavailable"


class StartFailed(BoxdError):
    code = "StartFailed"


class Timeout(BoxdError):
    code = "Timeout"


class AccessDenied(BoxdError):
    code = "AccessDenied"


class Busy(BoxdError):
    code = "Busy"


class LimitReached(BoxdError):
    code = "LimitReached"


class IdCollision(BoxdError):
    """A box owner's host id range would share ids with a host user, group or subid range."""
    code = "IdCollision"


class ConfigError(BoxdError):
    code = "ConfigError"


class UnknownMethod(BoxdError):
    code = "UnknownMethod"


class TooLarge(BoxdError):
    """An input over one of boxd's size limits (boxd/limits.py, boxd/bus/wire.py)."""

    code = "TooLarge"


class TooManyCalls(BoxdError):
    code = "TooManyCalls"


class BadFd(BoxdError):
    """A file descriptor a caller handed over cannot be used as asked (wrong access mode, an
    O_PATH descriptor): boxd never widens a caller's access."""

    code = "BadFd"
