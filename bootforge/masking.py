"""Which values are secrets, and how they are hidden: one rule for the API, its errors and the logs.

The rule (documented in the README's Security section):

- A key is secret when its name, lower-cased, contains one of SECRET_MARKERS (password, passwd,
  pswd, passphrase, secret, token, credential, private, configdrive: a config drive carries user
  data, which often holds passwords), or ends in "key" (snmp_auth_key, sslkey, api_key) or is "kg" /
  ends in "_kg" (IPMI's BMC key).
- A secret key's value is replaced by MASK whatever its type (a string, a number, an object, a
  list): `ipmi_credentials: {"user": ..., "pass": ...}` is hidden whole. Empty values (null, "",
  {}, []) are shown as they are, so a client can see that nothing is set.
- The rule applies at every depth, through objects and lists alike
  (`bmcs: [{"password": ...}]`).

False positives (a `public_key` masked) cost a client a look elsewhere; a false negative leaks a
BMC password, so the rule leans towards masking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "INSTANCE_SECRETS",
    "MASK",
    "SECRET_MARKERS",
    "is_secret_key",
    "mask_node_field",
    "mask_tree",
    "redact",
    "secret_values",
]

MASK: Final = "******"
SECRET_MARKERS: Final = (
    "password",
    "passwd",
    "pswd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "private",
    "_key",
    # The built drive in driver_internal_info (deploy_configdrive) and in the agent's queued command.
    "configdrive",
)

# instance_info keys hidden although their names carry no marker: a config drive holds user data
# (often with passwords), an image URL may carry a temporary signature.
INSTANCE_SECRETS: Final = frozenset({"configdrive", "rescue_password", "image_url"})


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    k = key.lower()
    return any(m in k for m in SECRET_MARKERS) or k.endswith(("key", "_kg")) or k == "kg"


def mask_tree(value: Any) -> Any:
    """`value` with every secret key's value replaced by MASK, at any depth (objects and lists)."""
    if isinstance(value, Mapping):
        return {k: (MASK if _set(v) and is_secret_key(k) else mask_tree(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_tree(v) for v in value]
    return value


def _set(value: Any) -> bool:
    return value is not None and value != "" and value != {} and value != []


def mask_node_field(field: str, value: Any) -> Any:
    """A node field as clients see it: what GET shows, and what a JSON-PATCH `test` compares with."""
    if field == "driver_info":
        return mask_tree(value or {})
    if field == "instance_info":
        return mask_tree({k: (MASK if k in INSTANCE_SECRETS and v else v) for k, v in (value or {}).items()})
    if field == "driver_internal_info":
        # The agent's token is dropped, as Ironic does; anything else secret-named is masked.
        return mask_tree({k: v for k, v in (value or {}).items() if "token" not in k})
    return value


def secret_values(value: Any) -> list[str]:
    """Every value mask_tree would hide, as text, longest first (so a secret that contains another is
    replaced whole): what a driver's free-form message must not quote."""
    found: list[str] = []

    def leaves(item: Any) -> None:
        if isinstance(item, Mapping):
            for v in item.values():
                leaves(v)
        elif isinstance(item, list | tuple):
            for v in item:
                leaves(v)
        elif _set(item) and not isinstance(item, bool):
            found.append(str(item))

    def walk(item: Any) -> None:
        if isinstance(item, Mapping):
            for k, v in item.items():
                if is_secret_key(k):
                    leaves(v)
                else:
                    walk(v)
        elif isinstance(item, list | tuple):
            for v in item:
                walk(v)

    walk(value)
    return sorted(set(found), key=len, reverse=True)


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with each of `secrets` replaced by MASK in every string, at any depth."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, Mapping):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value
