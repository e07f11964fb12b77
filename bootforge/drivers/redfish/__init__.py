"""The `redfish` hardware type: servers behind a DMTF Redfish BMC, over bootforge's own async client.

Modules: `info` (driver_info), `client` (`RedfishClient`: sessions, discovery, power, boot override,
ETags, task monitors, Secure Boot, virtual media), `quirks` (vendor differences as a table),
`interfaces` (RedfishPower, RedfishManagement), `boot` (the network boot interfaces, which set the
BMC's Secure Boot as the node's capabilities ask).

Why an own client on httpx rather than sushy (the library Ironic uses) in threads. The rule is a
well-kept library except on a measured hot path, and power-state sync over a fleet of BMCs is one
(issue #10: a round over 200 BMCs in <= 10 s, some of which never answer). Measured on this 2-core
machine, 200 clients each reading one ComputerSystem's PowerState once, connections already open,
wall time / client CPU (scripts: /work/notes/redfish-client-choice/):

| peer (loopback, TLS)                      | httpx, asyncio     | sushy, 6 threads*  | sushy, 200 threads |
|-------------------------------------------|--------------------|--------------------|--------------------|
| fake BMC answering at once                | 0.10 s / 0.10 s    | 0.20 s / 0.20 s    | 0.20 s / 0.20 s    |
| fake BMC answering after 0.5 s (BMC-like) | 0.73 s / 0.26 s    | 17.1 s / 0.19 s    | 0.66 s / 0.23 s    |
| sushy-emulator (fake driver, basic auth)  | 1.40 s / 0.44 s    | 1.13 s / 0.50 s    | 1.72 s / 0.54 s    |

(* asyncio's default executor on 2 cores: min(32, cpus + 4) = 6 threads.) Per-call latency alone is
the same (0.7 ms against the fake, 16-20 ms against sushy-emulator, which is the bottleneck there:
~0.9 s of its CPU per 200 reads). Opening 200 connections: httpx 0.27 s CPU, sushy 0.78 s (sushy also
probes the SessionService). So: sushy costs twice the CPU per call, and with BMC-like latency it needs
a thread per BMC in flight; a BMC that never answers pins its thread for the whole timeout and cannot
be cancelled (asyncio.wait_for on a thread abandons it, the request goes on). The async client is
cancellable, has one deadline per operation, and its requests can be asserted in tests through
httpx.MockTransport. What sushy gives for free (session/basic fallback, AllowableValues, vmedia under
System or Manager, ETag retry, vendor workarounds) is written here, the vendor parts as data in
quirks.py, each row citing where its fact comes from.

The driver itself, as a power sync would use it: 200 concurrent RedfishPower.get_power_state calls,
each opening its own client (service root, system, no session service: basic auth; 3 requests
without redfish_system_id, 2 with), TLS to the same loopback fake BMC: 1.3 s wall / 0.65 s CPU when
it answers at once, 2.0-2.3 s wall when every answer takes 0.5 s. A new TLS connection per operation
is most of that CPU. Against a BMC with a SessionService the interfaces keep the session between a
node's operations (interfaces.SESSION_IDLE), so a power read then costs the system GET alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bootforge.drivers.redfish.client import RedfishClient, RedfishError, VirtualMedia
from bootforge.drivers.redfish.info import PROPERTIES, RedfishInfo, parse_driver_info
from bootforge.drivers.redfish.interfaces import RedfishManagement, RedfishPower

if TYPE_CHECKING:
    from bootforge.drivers.hardware import HardwareType

__all__ = [
    "PROPERTIES",
    "RedfishClient",
    "RedfishError",
    "RedfishInfo",
    "RedfishManagement",
    "RedfishPower",
    "VirtualMedia",
    "hardware",
    "parse_driver_info",
]


def hardware() -> HardwareType:
    """The `redfish` hardware type: power and management over Redfish; boot from GENERIC."""
    from bootforge.drivers.hardware import hardware_type  # hardware.py imports this package
    from bootforge.drivers.redfish.boot import RedfishIpxeBoot, RedfishPxeBoot

    return hardware_type(
        "redfish",
        "Servers behind a DMTF Redfish BMC: power, boot override (device, once/persistent, UEFI/Legacy), "
        "Secure Boot, virtual media; vendor differences from a quirks table.",
        management=[("redfish", lambda s: RedfishManagement(s.power_state_change_timeout))],
        power=[("redfish", lambda s: RedfishPower(s.power_state_change_timeout))],
        # GENERIC's network boot, plus Secure Boot switched through the BMC (boot.py).
        boot=[("pxe", RedfishPxeBoot), ("ipxe", RedfishIpxeBoot)],
    )
