"""JSON-PATCH (RFC 6902) for the PATCH routes, with errors that never quote the document.

jsonpatch's own messages print the values a `test` compared and the object a pointer failed in; a
node's document holds its BMC password, so those messages never reach a client. Each error here
names the operation's index, its path and what is wrong with it, from the request alone.

A `test` compares with what the client can read (the `view` of each field, e.g. secrets masked), so
it cannot be used to guess a secret one value at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jsonpatch
import jsonpointer
import orjson

from bootforge.config import ApiLimits
from bootforge.errors import InvalidInput

__all__ = ["View", "apply", "check_field", "check_ops", "depth"]

# (top-level field, its value) -> what a client reading the resource sees of it
View = Callable[[str, Any], Any]


def check_ops(patch: Any, allowed_ops: Collection[str], fields: Collection[str]) -> list[dict[str, Any]]:
    """The patch as a list of operations on `fields`, or InvalidInput naming what is wrong."""
    if not isinstance(patch, list) or not patch:
        raise InvalidInput("the body must be a non-empty JSON-PATCH list", "patch")
    for i, op in enumerate(patch):
        if not isinstance(op, dict) or "path" not in op or "op" not in op:
            raise InvalidInput(f"patch[{i}] must have 'op' and 'path'", "patch")
        if op["op"] not in allowed_ops:
            raise InvalidInput(
                f"patch[{i}] ({str(op['path'])[:200]}): unsupported op {str(op['op'])[:40]!r}; "
                f"use one of {', '.join(allowed_ops)}",
                "patch",
            )
        for key in ("path", "from") if op["op"] in ("move", "copy") else ("path",):
            where = op.get(key)
            if not isinstance(where, str) or not where.startswith("/"):
                raise InvalidInput(f"patch[{i}]: {key} must be a JSON pointer such as /extra/foo", "patch")
            top = jsonpointer.unescape(where[1:].split("/")[0])
            if top not in fields:
                raise InvalidInput(f"Cannot update field {where!r}: it does not exist or is read-only", where)
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            raise InvalidInput(f"patch[{i}] ({op['op']} {op['path']}) needs a 'value'", op["path"])
    return patch


def apply(
    doc: Mapping[str, Any],
    patch: list[dict[str, Any]],
    view: View | None = None,
    limits: ApiLimits | None = None,
) -> dict[str, Any]:
    """A patched copy of `doc`; `patch` must have passed check_ops.

    With `limits`, each field the patch touched is checked as a whole afterwards (check_field): ops
    that are each small can still build a field too deep or too large together.
    """
    current: dict[str, Any] = copy.deepcopy(dict(doc))
    for i, op in enumerate(patch):
        target = current
        try:
            if op["op"] == "test":
                if view is not None:
                    target = {k: view(k, v) for k, v in current.items()}
                jsonpatch.apply_patch(target, [op], in_place=True)  # a test changes nothing
            else:
                current = jsonpatch.apply_patch(current, [op], in_place=True)
        except jsonpatch.JsonPatchTestFailed:
            raise InvalidInput(
                f"patch[{i}]: test failed: the value at {op['path']} is not the one given", op["path"]
            ) from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
            why = _why(target, op)
            raise InvalidInput(f"patch[{i}]: cannot {op['op']} {_where(op)}: {why}", op["path"]) from None
    if limits is not None:
        for field in {jsonpointer.unescape(op["path"][1:].split("/")[0]) for op in patch}:
            check_field(field, current.get(field), limits)
    return current


def check_field(name: str, value: Any, limits: ApiLimits) -> None:
    """A JSON value within the depth and size limits, or InvalidInput naming `name`."""
    if isinstance(value, str):
        if len(value) > limits.max_json_field_bytes:
            raise _too_large(name, len(value), limits)
        return
    if not isinstance(value, dict | list):
        return
    if depth(value, limits.max_json_depth) > limits.max_json_depth:
        raise InvalidInput(
            f"{name} is nested more than {limits.max_json_depth} levels deep "
            "(setting api_limits.max_json_depth)",
            name,
        )
    size = len(orjson.dumps(value))
    if size > limits.max_json_field_bytes:
        raise _too_large(name, size, limits)


def _too_large(name: str, size: int, limits: ApiLimits) -> InvalidInput:
    return InvalidInput(
        f"{name} is {size} bytes as JSON; the limit is {limits.max_json_field_bytes} "
        "(setting api_limits.max_json_field_bytes)",
        name,
    )


def depth(value: Any, stop: int) -> int:
    """Nesting depth of objects and lists in `value` ({} is 1), counted up to stop + 1 without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > stop:
            return deepest
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _where(op: Mapping[str, Any]) -> str:
    return f"{op['from']} to {op['path']}" if op["op"] in ("move", "copy") else str(op["path"])


def _why(doc: Any, op: Mapping[str, Any]) -> str:
    """What is wrong with the op's pointers, found by walking them; never a value of `doc`."""
    for key in ("from", "path"):
        if key not in op:
            continue
        parts = [jsonpointer.unescape(p) for p in str(op[key])[1:].split("/")]
        # `add` may create the last part, `remove`/`replace`/`test` and a `from` must find it.
        needs_last = not (key == "path" and op["op"] in ("add", "move", "copy"))
        problem = _walk(doc, parts, needs_last)
        if problem:
            return problem
    if op["op"] == "move":
        return "a value cannot be moved into itself"
    return "the operation does not apply to this document"


def _walk(doc: Any, parts: list[str], needs_last: bool) -> str | None:
    node = doc
    for n, part in enumerate(parts):
        here = "/" + "/".join(parts[:n]) if n else "the document"
        last = n == len(parts) - 1
        if isinstance(node, dict):
            if part not in node:
                return None if last and not needs_last else f"{here} has no member {part!r}"
            node = node[part]
        elif isinstance(node, list):
            if part == "-" and last and not needs_last:
                return None
            if not part.isdigit() or (part != "0" and part.startswith("0")):
                return f"{part!r} is not an index of the list at {here}"
            index = int(part) if len(part) < 10 else len(node) + 1
            if index > len(node) or (index == len(node) and (needs_last or not last)):
                return f"index {part} is out of range for the list at {here}"
            node = node[index] if index < len(node) else None
        else:
            return f"{here} is neither an object nor a list"
    return None
