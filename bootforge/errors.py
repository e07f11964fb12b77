"""bootforge's errors. Each carries the HTTP status the API answers with.

    BootforgeError (500)
    ├── InvalidInput (400)             a field of a request is wrong; `field` names it
    ├── NotAuthorized (401)
    ├── Forbidden (403)                e.g. a protected node cannot be undeployed or deleted
    ├── NotFound (404)
    ├── NotAcceptable (406)            microversion outside the supported range
    ├── Conflict (409)
    │   ├── NodeLocked (409)           another action holds the node's lock
    │   └── InvalidStateTransition     the verb is not allowed in the node's state
    └── DriverError (500)              a BMC or driver operation failed; the cause is in the message

Messages are written for the operator who reads them in `baremetal` output: they name the node, the
state, the verb or the field, and never contain secrets.
"""

from __future__ import annotations


class BootforgeError(Exception):
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(BootforgeError):
    http_status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotAuthorized(BootforgeError):
    http_status = 401


class Forbidden(BootforgeError):
    http_status = 403


class NotFound(BootforgeError):
    http_status = 404


class NotAcceptable(BootforgeError):
    http_status = 406


class Conflict(BootforgeError):
    http_status = 409


class NodeLocked(Conflict):
    pass


class InvalidStateTransition(Conflict):
    pass


class DriverError(BootforgeError):
    http_status = 500
