"""Files sealed with the SHA-256 of their content (issue 20): a scan part, a training state.

The payload is serialised with torch.save and written beside the digest of those bytes, so a flipped byte, an edited
count or an array cut short no longer matches, and the file is refused before anything in it is read or merged.
It guards against damage and hand edits, not against someone who recomputes the digest.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any
from collections.abc import Mapping

import torch


def sealed_bytes(payload: Mapping[str, Any], *, header: Mapping[str, Any]) -> bytes:
    """The file's bytes: `header` (read before the digest is checked: a format and version) and the sealed payload."""
    body = io.BytesIO()
    torch.save(dict(payload), body)
    content = body.getvalue()
    sealed = io.BytesIO()
    torch.save({**header, "sha256": hashlib.sha256(content).hexdigest(), "body": content}, sealed)
    return sealed.getvalue()


def is_sealed(loaded: Any) -> bool:
    return isinstance(loaded, Mapping) and "body" in loaded and "sha256" in loaded


def unsealed(loaded: Mapping[str, Any]) -> dict[str, Any] | None:
    """The payload of a sealed file once its content matches its digest; None when it does not, or cannot be read."""
    content, recorded = loaded.get("body"), loaded.get("sha256")
    if not isinstance(content, bytes) or not isinstance(recorded, str) or hashlib.sha256(content).hexdigest() != recorded:
        return None
    try:
        payload = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception:  # a matching digest over content that is not ours: as good as damaged
        return None
    return payload if isinstance(payload, dict) else None
