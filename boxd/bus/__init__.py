"""The D-Bus layer: parse, authorize, delegate. No podman JSON, no box logic here."""
