"""boxd: interactive pet containers managed by a system daemon over D-Bus."""

__version__ = "0.1.0"
