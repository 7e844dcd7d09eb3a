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


class ConfigError(BoxdError):
    code = "ConfigError"


class TooLarge(BoxdError):
    """An input over one of boxd's size limits (boxd/limits.py, boxd/bus/wire.py)."""

    code = "TooLarge"


class TooManyCalls(BoxdError):
    code = "TooManyCalls"
