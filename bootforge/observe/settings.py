"""Settings of metrics and outbound events (`metrics` and `events` in config.py's Settings).

In TOML:

    [metrics]
    public = false          # /metrics needs the API's credentials (http_basic) unless true

    [[events.webhooks]]
    name = "ops"
    url = "https://hooks.example.net/bootforge"
    secret = "at least 16 characters, shared with the receiver"
    events = ["provision", "failure", "maintenance"]
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator

EventKind = Literal["provision", "failure", "maintenance"]
EVENT_KINDS: tuple[EventKind, ...] = ("provision", "failure", "maintenance")
TARGET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class MetricsSettings(BaseModel):
    """Prometheus metrics at /metrics on the API listener."""

    enabled: bool = True
    # False: /metrics is behind the API's authentication like every other route (Prometheus sends
    # basic_auth). True: anyone who reaches the API listener may scrape it; node counts, states and
    # rates are then visible without credentials.
    public: bool = False
    # How often the event-loop lag probe wakes (seconds; 0 switches it off).
    loop_lag_interval: float = Field(default=0.5, ge=0)


class WebhookTarget(BaseModel):
    """One receiver of CloudEvents over HTTP POST."""

    name: str
    url: str
    # HMAC-SHA256 key shared with the receiver; never logged nor returned by the API.
    secret: SecretStr
    events: list[EventKind] = list(EVENT_KINDS)
    # Seconds one POST may take (connect, send, answer).
    timeout: float = Field(default=10.0, gt=0, le=120)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TARGET_NAME.match(value):
            raise ValueError(f"webhook name {value!r} must be 1-64 of letters, digits, '_', '.', '-'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook url must be an http:// or https:// URL with a host")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("webhook secret must be at least 16 characters")
        return value


class EventSettings(BaseModel):
    """Outbound events: webhooks and the server-sent event streams."""

    webhooks: list[WebhookTarget] = []
    # A failed POST is tried again after backoff_initial, doubling up to backoff_max seconds, until
    # max_attempts POSTs or max_age seconds since the event; then it is dropped (counted, logged).
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_initial: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)
    max_age: float = Field(default=3600.0, gt=0)
    # Events waiting per target in the outbox table; beyond, the oldest are dropped (counted): a
    # receiver that is down for days must not fill the database.
    max_pending: int = Field(default=10000, ge=10)
    # POSTs in flight per target (to different nodes: one node's events go one at a time, in order).
    concurrency: int = Field(default=8, ge=1, le=256)
    # Server-sent event streams open at once (each costs a task and, for a node's timeline, one
    # indexed query every stream_poll_interval seconds).
    max_stream_clients: int = Field(default=64, ge=1, le=10000)
    # Events buffered for a slow stream client before it is cut off (it may reconnect and resume).
    stream_queue: int = Field(default=1000, ge=10)
    stream_poll_interval: float = Field(default=0.5, gt=0, le=60)
    stream_keepalive: float = Field(default=15.0, gt=0, le=300)

    @field_validator("webhooks")
    @classmethod
    def _unique(cls, value: list[WebhookTarget]) -> list[WebhookTarget]:
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"webhook names must be unique: {', '.join(dupes)}")
        return value
