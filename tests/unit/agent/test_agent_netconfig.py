"""The ramdisk's static network (bootforge.net=): encoding round trip, parse errors, the ip commands,
and setting it up on a fake /sys with a recording command runner."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootforge.agent import netconfig
from bootforge.agent.cmdline import parse as parse_cmdline
from bootforge.agent.netconfig import Interface, NetConfigError, Route, StaticNet
from bootforge.netboot.boot.scripts import RamdiskBoot

MAC = "52:54:00:77:00:01"

macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addresses = st.one_of(ipv4, ipv6)


@st.composite
def cidrs(draw: st.DrawFn) -> str:
    address = ipaddress.ip_address(draw(addresses))
    prefix = draw(st.integers(0, 32 if address.version == 4 else 128))
    return ipaddress.ip_interface(f"{address}/{prefix}").with_prefixlen


@st.composite
def routes(draw: st.DrawFn) -> Route:
    cidr = ipaddress.ip_interface(draw(cidrs()))
    gateway = draw(ipv4 if cidr.version == 4 else ipv6)
    return Route(cidr.network.with_prefixlen, gateway)


@st.composite
def interfaces(draw: st.DrawFn) -> Interface:
    gateways = draw(st.lists(st.sampled_from([4, 6]), unique=True, max_size=2))
    return Interface(
        draw(macs),
        tuple(draw(st.lists(cidrs(), max_size=3))),
        tuple(draw(ipv4 if v == 4 else ipv6) for v in gateways),
        tuple(draw(st.lists(routes(), max_size=2))),
        draw(st.none() | st.integers(68, 65535)),
    )


nets = st.builds(
    StaticNet,
    st.lists(interfaces(), min_size=1, max_size=3).map(tuple),
    st.lists(addresses, max_size=3).map(tuple),
)


@given(nets)
def test_encode_then_parse_gives_the_same_configuration(net: StaticNet) -> None:
    value = netconfig.encode(net)
    assert netconfig.parse(value) == net
    # It survives the trip through a kernel command line, and the boot scripts' argument check.
    assert parse_cmdline(f"quiet {netconfig.PARAM}={value} console=ttyS0")[netconfig.PARAM] == value
    RamdiskBoot("http://h/k", "http://h/i", ((netconfig.PARAM, value),))


def test_parse_reads_the_documented_example_in_canonical_form() -> None:
    net = netconfig.parse(
        "mac=52:54:00:77:00:01,ip=10.77.0.11/24,gw=10.77.0.1,dns=10.77.0.1,"
        "mac=52-54-00-77-00-02,ip=2001:DB8:0:0::5/64,gw=2001:db8::1,route=192.0.2.0/24@10.77.0.254,mtu=9000"
    )
    assert net == StaticNet(
        (
            Interface(MAC, ("10.77.0.11/24",), ("10.77.0.1",)),
            Interface(
                "52:54:00:77:00:02",
                ("2001:db8::5/64",),
                ("2001:db8::1",),
                (Route("192.0.2.0/24", "10.77.0.254"),),
                9000,
            ),
        ),
        ("10.77.0.1",),
    )


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("", "item 1"),
        ("ip=10.0.0.1/24", "before any mac="),
        ("mac=52:54:00:77:00", "not a MAC"),
        (f"mac={MAC},ip=10.0.0.1", "no /PREFIX"),
        (f"mac={MAC},ip=10.0.0.300/24", "not an ADDR/PREFIX"),
        (f"mac={MAC},gw=gateway", "not an IP address"),
        (f"mac={MAC},route=10.0.0.1/8@10.0.0.254", "host bits"),
        (f"mac={MAC},route=10.0.0.0/8", "NET/PREFIX@GATEWAY"),
        (f"mac={MAC},mtu=12", "MTU"),
        (f"mac={MAC},mtu=1500,mtu=9000", "more than one mtu"),
        (f"mac={MAC},gw=10.0.0.1,gw=10.0.0.2", "two default gateways"),
        (f"mac={MAC},speed=10", "KEY=VALUE"),
        ("dns=10.0.0.1", "no interface"),
    ],
)
def test_parse_names_what_is_wrong(value: str, names: str) -> None:
    with pytest.raises(NetConfigError, match=names):
        netconfig.parse(value)


def test_commands_set_addresses_then_routes() -> None:
    net = netconfig.parse(
        f"mac={MAC},ip=10.77.0.11/24,ip=2001:db8::5/64,route=192.0.2.0/24@10.77.0.254,gw=10.77.0.1,mtu=1400"
    )
    assert netconfig.commands(net, {MAC: "eth0"}) == [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "set", "dev", "eth0", "mtu", "1400"],
        ["ip", "link", "set", "dev", "eth0", "up"],
        ["ip", "-4", "addr", "flush", "dev", "eth0"],
        ["ip", "-4", "addr", "add", "10.77.0.11/24", "dev", "eth0"],
        ["ip", "-6", "addr", "add", "2001:db8::5/64", "dev", "eth0", "nodad"],
        ["ip", "-4", "route", "replace", "192.0.2.0/24", "via", "10.77.0.254", "dev", "eth0"],
        ["ip", "-4", "route", "replace", "default", "via", "10.77.0.1", "dev", "eth0"],
    ]


def _fake_sys(root: Path, nics: dict[str, str]) -> None:
    for name, mac in {"lo": "00:00:00:00:00:00", **nics}.items():
        d = root / "sys" / "class" / "net" / name
        d.mkdir(parents=True)
        (d / "address").write_text(mac.upper() + "\n")


def test_apply_finds_the_nic_by_mac_runs_the_commands_and_writes_dns(tmp_path: Path) -> None:
    _fake_sys(tmp_path, {"enp1s0": "52:54:00:00:00:09", "enp2s0": MAC})
    (tmp_path / "etc").mkdir()
    (tmp_path / "run").mkdir()
    ran: list[Sequence[str]] = []
    net = netconfig.parse(f"mac={MAC},ip=10.77.0.11/24,gw=10.77.0.1,dns=10.77.0.1,dns=192.0.2.53")
    lines = netconfig.apply(
        net,
        ran.append,
        lambda: netconfig.system_macs(str(tmp_path)),
        str(tmp_path / "etc"),
        str(tmp_path / "run"),
    )
    assert lines == [f"enp2s0 ({MAC}): 10.77.0.11/24, gateway 10.77.0.1"]
    assert ["ip", "-4", "addr", "add", "10.77.0.11/24", "dev", "enp2s0"] in ran
    assert (tmp_path / "etc" / "resolv.conf").read_text() == "nameserver 10.77.0.1\nnameserver 192.0.2.53\n"
    assert (tmp_path / "run" / "ipv4").read_text() == "10.77.0.11/24\n"


def test_a_nic_that_never_appears_is_named_after_the_wait() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    net = netconfig.parse(f"mac={MAC},ip=10.77.0.11/24")
    with pytest.raises(NetConfigError, match=f"no NIC has the MAC {MAC}.*eth0 52:54:00:00:00:09"):
        netconfig.find_nics(net, lambda: {"52:54:00:00:00:09": "eth0"}, 5.0, lambda: now[0], sleep)
    assert 5.0 <= now[0] < 5.5


def test_main_reports_a_bad_value_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert netconfig.main(["mac=zz"]) == 2
    assert "not a MAC" in capsys.readouterr().err
