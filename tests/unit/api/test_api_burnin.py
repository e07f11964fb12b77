"""Burn-in in automated cleaning, through the API with the agent's side played by the test: with
`[burnin] automated_clean`, `provide` runs the burn-in steps (with the settings' default arguments)
before the metadata erase, keeps their numbers, and a missed threshold fails the node with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apihelp import api_with
from test_api_agent import enrolled, lookup, poll, report

CPU = {"kind": "cpu", "seconds": 3.2, "tools": {"stress-ng": True}, "cpu": {
    "tool": "stress-ng 0.15.06", "bogo_ops": 7927, "bogo_ops_per_s": 2640.69,
    "bogo_ops_per_s_cpu_time": 2670.0, "cpus": 1, "method": "matrixprod", "duration_s": 3}}  # fmt: skip


def disk(iops: float) -> dict[str, Any]:
    job = {"job": "randread_4k", "rw": "read", "iops": iops, "bandwidth_mib_s": iops * 4 / 1024,
           "lat_p50_ms": 0.2, "lat_p99_ms": 0.7, "io_mib": 10.0}  # fmt: skip
    return {
        "kind": "disk",
        "seconds": 2.0,
        "disks": [{"name": "/dev/vda", "tool": "fio-3.33", "jobs": [job]}],
    }


def ramdisk(tmp_path: Path) -> None:
    boot = tmp_path / "state" / "boot" / "bootforge"
    boot.mkdir(parents=True)
    (boot / "vmlinuz").write_bytes(b"kernel")
    (boot / "initrd").write_bytes(b"initrd")


SETTINGS: dict[str, Any] = {
    "agent": {"lldp_wait": 0},
    "burnin": {
        "automated_clean": ["cpu", "disk"],
        "disk": {"seconds": 2, "jobs": ["randread_4k"], "min_iops": 1000},
    },
}


async def test_provide_burns_in_before_the_erase_and_keeps_the_numbers(tmp_path: Path) -> None:
    ramdisk(tmp_path)
    async for api in api_with(tmp_path, **SETTINGS):
        node = await enrolled(api)
        await api.drive(node, "provide")
        token = await lookup(api)
        cpu = await poll(api, node, token)
        assert cpu is not None and cpu["name"] == "burnin"
        assert cpu["args"] == {"kind": "cpu", "thresholds": {}}
        assert await report(api, node, token, cpu["id"], status="succeeded", result=CPU) == 200
        fio = await poll(api, node, token)
        assert fio is not None
        # The settings' default arguments, thresholds kept apart for the conductor.
        assert fio["args"] == {
            "kind": "disk",
            "seconds": 2,
            "jobs": ["randread_4k"],
            "thresholds": {"min_iops": 1000.0},
        }
        assert await report(api, node, token, fio["id"], status="succeeded", result=disk(4200.0)) == 200
        erase = await poll(api, node, token)
        assert erase is not None and erase["name"] == "erase"
        result = {"disks": [{"name": "/dev/vda", "mode": "metadata", "bytes": 2 * 1024**2}]}
        assert await report(api, node, token, erase["id"], status="succeeded", result=result) == 200
        shown = await api.get(node)
        assert shown["provision_state"] == "available", shown["last_error"]
        kept = shown["driver_internal_info"]["burnin"]
        assert kept["cpu"]["bogo_ops_per_s"] == 2640.69 and kept["cpu"]["passed"] is True
        assert kept["cpu"]["ramdisk_tools"] == {
            "stress-ng": True,
            "memtester": False,
            "fio": False,
            "iperf3": False,
        }
        assert kept["disk"]["disks"][0]["jobs"][0]["iops"] == 4200.0 and kept["disk"]["passed"] is True
        events = [e["event"] for e in (await api.c.get(f"/v1/nodes/{node}/history")).json()["history"]]
        assert "burn-in cpu: stress-ng 0.15.06 1 CPUs (matrixprod): 2640.7 bogo-ops/s; passed" in events


async def test_a_missed_threshold_fails_cleaning_with_the_numbers(tmp_path: Path) -> None:
    ramdisk(tmp_path)
    async for api in api_with(tmp_path, **SETTINGS):
        node = await enrolled(api)
        await api.drive(node, "provide")
        token = await lookup(api)
        cpu = await poll(api, node, token)
        assert cpu is not None
        await report(api, node, token, cpu["id"], status="succeeded", result=CPU)
        fio = await poll(api, node, token)
        assert fio is not None
        await report(api, node, token, fio["id"], status="succeeded", result=disk(812.0))
        shown = await api.get(node)
        assert shown["provision_state"] == "clean failed"
        assert (
            shown["last_error"]
            == "burn-in disk failed: fio randread_4k on /dev/vda: 812 IOPS < min_iops 1000"
        )
        assert shown["driver_internal_info"]["burnin"]["disk"]["passed"] is False


async def test_a_ramdisk_without_the_tools_fails_naming_the_build_option(tmp_path: Path) -> None:
    ramdisk(tmp_path)
    async for api in api_with(tmp_path, **SETTINGS):
        node = await enrolled(api)
        await api.drive(node, "provide")
        token = await lookup(api)
        cpu = await poll(api, node, token)
        assert cpu is not None
        error = "ramdisk has no stress-ng: build it with `bootforge ramdisk build --with burn-in`"
        await report(api, node, token, cpu["id"], status="failed", error=error)
        shown = await api.get(node)
        assert shown["provision_state"] == "clean failed"
        assert shown["last_error"] == f"the agent's burnin failed: {error}"
