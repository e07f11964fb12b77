"""Settings of rolling re-provisioning (conductor/rollouts.py): the named drain/undrain hooks.

Hooks live in the configuration only. A rollout created over the API names a hook; it never carries a
command or a URL, so whoever holds API credentials cannot make the conductor host run a program or
POST somewhere of their choosing.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

HOOK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RolloutHook(BaseModel):
    """One drain or undrain hook: a command (argv, no shell) or a webhook (signed HTTP POST)."""

    name: str
    # The program and its arguments; the node is given in the environment (BOOTFORGE_NODE_UUID,
    # BOOTFORGE_NODE_NAME, BOOTFORGE_ROLLOUT, BOOTFORGE_HOOK_PHASE). Exit status 0 is success.
    command: list[str] = []
    # Or: a URL that receives {"rollout", "phase", "node": {"uuid", "name"}} as JSON, signed like the
    # event webhooks (X-Bootforge-Signature over "<timestamp>.<body>" with `secret`); 2xx is success.
    url: str = ""
    secret: SecretStr | None = None
    # Seconds the hook may take; a hook still running then is killed and counts as failed.
    timeout: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not HOOK_NAME.match(value):
            raise ValueError(f"hook name {value!r} must be 1-64 of letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> RolloutHook:
        if bool(self.command) == bool(self.url):
            raise ValueError(f"hook {self.name!r} needs exactly one of command or url")
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"hook {self.name!r}: url must be an http:// or https:// URL with a host")
            if self.secret is None or len(self.secret.get_secret_value()) < 16:
                raise ValueError(f"hook {self.name!r}: a url hook needs a secret of at least 16 characters")
        return self


class RolloutSettings(BaseModel):
    hooks: list[RolloutHook] = []
    # Seconds between reads of a rebuilding node's state.
    poll_interval: float = Field(default=5.0, gt=0, le=300)
    # Seconds one node's rebuild may take until `active`; then it counts as a failure.
    node_timeout: float = Field(default=7200.0, gt=0)

    @model_validator(mode="after")
    def _unique(self) -> RolloutSettings:
        names = [h.name for h in self.hooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rollout hook names must be unique: {', '.join(dupes)}")
        return self

    def hook(self, name: str) -> RolloutHook | None:
        return next((h for h in self.hooks if h.name == name), None)
