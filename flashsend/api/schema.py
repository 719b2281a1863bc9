"""drf-spectacular hooks."""

from __future__ import annotations

from typing import Any


def strip_optional_slash(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document each path in its canonical form, without the optional trailing slash.

    API routes accept ``/api/apikeys`` and ``/api/apikeys/`` alike; the schema shows
    the first, which is the form the seed clients use.
    """
    paths = result.get("paths", {})
    result["paths"] = {
        (path.rstrip("/") if path != "/" else path): item for path, item in paths.items()
    }
    return result
