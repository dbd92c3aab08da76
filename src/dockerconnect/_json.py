"""One JSON reader for everything the library parses from outside.

Manifests, token answers, listings and error bodies all come from places the
library does not trust. ``json.loads`` alone lets a hostile document raise
``RecursionError`` (deep nesting) or be read two ways (duplicate keys: the
last one wins here, the first one in some other parsers). :func:`load_json`
turns both into one ``ValueError`` subclass, :class:`JsonInvalid`, that each
caller translates into its own typed error (``ManifestInvalid`` for a push,
``UpstreamError`` for a connector).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "JsonInvalid", "load_json"]

#: Deepest nesting of arrays and objects accepted. Real manifests nest four or
#: five levels; the limit leaves ample room while staying far below Python's
#: recursion limit.
MAX_DEPTH = 64


class JsonInvalid(ValueError):
    """The bytes are not one well-formed, unambiguous JSON document."""


def load_json(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data``, refusing bad UTF-8, duplicate keys and deep nesting.

    Raises :class:`JsonInvalid` with a short reason; never ``RecursionError``.
    """
    try:
        doc = json.loads(data, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise JsonInvalid(f"nested deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise JsonInvalid(f"not UTF-8: {exc.reason}") from None
    except ValueError as exc:  # json.JSONDecodeError and _unique_keys
        raise JsonInvalid(str(exc)) from None
    _check_depth(doc, max_depth)
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _check_depth(doc: Any, max_depth: int) -> None:
    """Walk ``doc`` without recursion; raise if it nests past ``max_depth``."""
    pending: list[tuple[Any, int]] = [(doc, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise JsonInvalid(f"nested deeper than {max_depth} levels")
        pending.extend((child, depth + 1) for child in children)
