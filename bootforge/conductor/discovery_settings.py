"""Settings of discovery (conductor/discovery.py): which unknown machines may boot the ramdisk and enrol.

Off by default. On, a machine whose MAC bootforge does not know is offered the ramdisk only when its
address (or its DHCP relay's) is inside one of `subnets`; everything else stays as unknown as before.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, Field, field_validator, model_validator


class DiscoverySettings(BaseModel):
    enabled: bool = False
    # CIDRs; a discovery boot and a discovery report are answered only from inside them.
    subnets: list[str] = []
    # The driver a discovered node is enrolled with before any rule sets one. With "ipmi" the BMC
    # address the machine reports goes into driver_info.ipmi_address ("redfish": redfish_address).
    driver: str = "ipmi"
    # New nodes enrolled per minute by this conductor, at most (a flood of fake machines, each
    # with a valid discovery token from its own boot, cannot fill the database faster).
    max_enrolments_per_minute: int = Field(default=30, ge=1, le=10_000)
    # Seconds a discovery boot's token stays valid after the boot script was handed out.
    token_ttl: float = Field(default=3600.0, gt=0, le=86_400)
    # Bounds of a reported inventory (the body itself is bounded by api_limits.max_body_bytes).
    max_inventory_bytes: int = Field(default=256 << 10, ge=4096, le=8 << 20)
    max_inventory_items: int = Field(default=256, ge=1, le=65_536)

    @field_validator("subnets")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"discovery.subnets: {net!r} is not a network (CIDR such as 10.0.0.0/24)"
                ) from None
        return value

    @model_validator(mode="after")
    def _needs_subnets(self) -> DiscoverySettings:
        if self.enabled and not self.subnets:
            raise ValueError(
                "discovery.enabled needs discovery.subnets: the networks unknown machines may boot from"
            )
        return self

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.subnets]

    def allows(self, address: str | None) -> bool:
        """Discovery is on and `address` is inside one of its subnets."""
        if not self.enabled or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks())
