"""HMAC-SHA256 signatures over a canonical JSON form, so a client that may publish cannot forge an "open".

The canonical form of a payload is its JSON object **without** the ``sig`` field, keys
sorted, no whitespace, non-ASCII escaped (``\\uXXXX``), a number with no fractional part
written as an integer (``1``, not ``1.0``) and any other number as the shortest text that
reads back to the same value (what JavaScript's ``JSON.stringify`` writes for the values the
contract allows). The signature is the lowercase hex HMAC-SHA256 of those bytes with the
gate's secret (``mqtt.command_secret``), stored in ``sig``. The verifier parses the message,
rebuilds the canonical form and compares in constant time, so field order and spacing on the
wire do not matter. docs/mqtt.md shows a worked example for integrators.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

SIGNATURE_FIELD = "sig"


def canonical(payload: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: `payload` minus ``sig``, sorted keys, compact, ASCII."""
    unsigned = {key: _plain_number(value) for key, value in payload.items() if key != SIGNATURE_FIELD}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _plain_number(value: Any) -> Any:
    # 1.0 and 1 are the same JSON number; languages disagree on how to write it, so write 1.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _plain_number(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_number(item) for item in value]
    return value


def signature(payload: Mapping[str, Any], secret: str) -> str:
    if not secret:
        raise ValueError("signing needs a non-empty secret")
    return hmac.new(secret.encode(), canonical(payload), hashlib.sha256).hexdigest()


def sign(payload: Mapping[str, Any], secret: str) -> dict[str, Any]:
    """`payload` with its ``sig``."""
    return {**payload, SIGNATURE_FIELD: signature(payload, secret)}


def verify(payload: Mapping[str, Any], secret: str) -> bool:
    """True if `payload` carries a valid ``sig`` for `secret`."""
    claimed = payload.get(SIGNATURE_FIELD)
    if not isinstance(claimed, str) or not secret:
        return False
    return hmac.compare_digest(claimed.encode(), signature(payload, secret).encode())
