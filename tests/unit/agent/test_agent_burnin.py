"""The agent's burnin command: parsing the real outputs of Debian 12's tools (captured on this host with
stress-ng 0.15.06, memtester 4.6.0, fio 3.33 and iperf3 3.12, in tests/data/burnin/), the missing-tool
message, the time limit that kills a tool's whole process group, and short real runs of each tool."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bootforge.agent import burnin
from bootforge.agent.common import CommandError, Context

DATA = Path(__file__).resolve().parents[2] / "data" / "burnin"


def no_progress(done: int, total: int, message: str) -> None:
    pass


def test_stress_ng_yaml_report() -> None:
    m = burnin.parse_stress_ng((DATA / "stress-ng-0.15.06-cpu.yaml").read_text())
    assert m == {
        "tool": "stress-ng 0.15.06",
        "bogo_ops": 7927,
        "bogo_ops_per_s": 2640.689056,
        "bogo_ops_per_s_cpu_time": 2670.008865,
    }


def test_stress_ng_metrics_lines_when_there_is_no_yaml() -> None:
    m = burnin.parse_stress_ng((DATA / "stress-ng-0.15.06-cpu.txt").read_text())
    assert (m["bogo_ops"], m["bogo_ops_per_s"], m["bogo_ops_per_s_cpu_time"]) == (7927, 2640.69, 2670.01)


def test_stress_ng_without_metrics_is_an_error_quoting_it() -> None:
    with pytest.raises(CommandError, match=r"stress-ng printed no metrics for the cpu stressor: .*no such"):
        burnin.parse_stress_ng("stress-ng: error: no such stressor\n")


def test_memtester_all_ok_through_its_backspaced_progress() -> None:
    r = burnin.parse_memtester((DATA / "memtester-4.6.0-ok.txt").read_text())
    assert r["tool"] == "memtester 4.6.0"
    assert (r["wanted_mib"], r["tested_mib"]) == (8, 8)
    assert len(r["tests"]) == 18 and set(r["tests"].values()) == {"ok"}
    assert "Stuck Address" in r["tests"] and "16-bit Writes" in r["tests"]
    assert r["failures"] == []


def test_memtester_that_locked_less_than_asked_says_how_much() -> None:
    r = burnin.parse_memtester((DATA / "memtester-4.6.0-reduced.txt").read_text())
    assert (r["wanted_mib"], r["tested_mib"]) == (400, 192)


def test_memtester_failure_lines_fail_their_test() -> None:
    # memtester prints the test's name on stdout and FAILURE on stderr; the agent merges the two.
    text = (
        (DATA / "memtester-4.6.0-ok.txt")
        .read_text()
        .replace(
            "  Compare XOR         : ok",
            "  Compare XOR         : FAILURE: 0x4f5e3c2a != 0x4f5e3c2b at offset 0x00012340.\n"
            "  Compare SUB         : ok",
            1,
        )
    )
    r = burnin.parse_memtester(text)
    assert r["failures"] == ["Compare XOR"]
    assert r["tests"]["Compare XOR"].startswith("FAILURE: 0x4f5e3c2a != 0x4f5e3c2b")


def test_fio_json_report() -> None:
    r = burnin.parse_fio((DATA / "fio-3.33-host-file.json").read_text())
    assert r["tool"] == "fio-3.33"
    by_job = {j["job"]: j for j in r["jobs"]}
    assert list(by_job) == ["seqread_1m", "seqwrite_1m", "randread_4k", "randwrite_4k"]
    assert [j["rw"] for j in r["jobs"]] == ["read", "write", "read", "write"]
    rr = by_job["randread_4k"]
    # The captured run's numbers, as fio computed them (bw in KiB/s, clat in ns).
    assert rr["iops"] == 114047.3
    assert rr["bandwidth_mib_s"] == round(456189 / 1024, 2)
    assert (rr["lat_p50_ms"], rr["lat_p99_ms"]) == (0.247, 0.659)
    assert by_job["seqwrite_1m"]["bandwidth_mib_s"] == round(2027914 / 1024, 2)


def test_fio_text_before_the_json_is_skipped_and_garbage_refused() -> None:
    doc = (DATA / "fio-3.33-host-file.json").read_text()
    assert burnin.parse_fio("fio: note: something\n" + doc)["jobs"]
    with pytest.raises(CommandError, match="fio printed no JSON report"):
        burnin.parse_fio("fio: failed to open /dev/vdz")
    failed = json.loads(doc)
    failed["jobs"][2]["error"] = 5
    with pytest.raises(CommandError, match="fio job randread_4k failed with error 5"):
        burnin.parse_fio(json.dumps(failed))


def test_iperf3_json_report_and_its_error() -> None:
    r = burnin.parse_iperf3((DATA / "iperf3-3.12-loopback.json").read_text())
    assert r["tool"] == "iperf 3.12"
    assert r["received_mbps"] == round(21811443203.173107 / 1e6, 1)
    assert r["sent_mbps"] == round(21815717339.923935 / 1e6, 1)
    refused = burnin.parse_iperf3(json.dumps({"start": {}, "error": "unable to connect to server: refused"}))
    assert refused == {"error": "unable to connect to server: refused"}


def test_fio_command_line_runs_the_jobs_one_after_another_on_the_region() -> None:
    argv = burnin.fio_argv("/dev/vda", ["randread_4k", "seqwrite_1m"], 5, 256)
    assert "--filename=/dev/vda" in argv and "--size=256M" in argv and "--direct=1" in argv
    assert argv.index("--name=randread_4k") < argv.index("--name=seqwrite_1m")
    assert argv.count("--stonewall") == 2


def test_a_ramdisk_without_the_tool_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandError) as err:
        burnin.run({"kind": "disk"}, Context(), no_progress)
    assert str(err.value) == "ramdisk has no fio: build it with `bootforge ramdisk build --with burn-in`"
    assert burnin.available_tools() == {"stress-ng": False, "memtester": False, "fio": False, "iperf3": False}


def test_unknown_kind_and_bad_arguments_are_refused() -> None:
    with pytest.raises(CommandError, match="unknown burn-in kind 'gpu'"):
        burnin.run({"kind": "gpu"}, Context(), no_progress)
    if shutil.which("stress-ng"):
        with pytest.raises(CommandError, match="seconds must be an integer from 1"):
            burnin.run({"kind": "cpu", "seconds": 0}, Context(), no_progress)


def test_a_tool_past_its_time_limit_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    with pytest.raises(CommandError, match="sh did not finish within 1 s and was killed"):
        burnin.run_tool(["sh", "-c", script], 1.0)
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    # The grandchild (stress-ng's and fio's workers are such) goes with the group; wait for the kernel
    # to reap it rather than sleeping a fixed time.
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (Debian package {tool})")


def test_real_stress_ng_run() -> None:
    _need("stress-ng")
    r = burnin.run({"kind": "cpu", "seconds": 1, "cpus": 1}, Context(), no_progress)
    assert r["kind"] == "cpu" and r["tools"]["stress-ng"] is True
    assert r["cpu"]["bogo_ops"] > 0 and r["cpu"]["bogo_ops_per_s"] > 0
    assert r["cpu"]["tool"].startswith("stress-ng 0.")


def test_real_memtester_run() -> None:
    _need("memtester")
    r = burnin.run({"kind": "memory", "size_mib": 2, "loops": 1}, Context(), no_progress)
    mem: dict[str, Any] = r["memory"]
    assert mem["tested_mib"] == 2 and mem["failures"] == [] and len(mem["tests"]) == 18


def test_real_fio_run_on_a_disk_file(tmp_path: Path) -> None:
    _need("fio")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(32 << 20)
    ctx = Context(disks=[disk])
    try:
        r = burnin.run({"kind": "disk", "seconds": 1, "size_mib": 16}, ctx, no_progress)
    except CommandError as exc:
        if "Invalid argument" in str(exc):
            pytest.skip(f"{tmp_path} does not take O_DIRECT I/O (tmpfs?): {exc}")
        raise
    (only,) = r["disks"]
    assert only["name"] == str(disk) and only["size_mib"] == 16
    assert [j["job"] for j in only["jobs"]] == list(burnin.FIO_JOBS)
    assert all(j["iops"] > 0 and j["lat_p99_ms"] is not None for j in only["jobs"])
    assert os.path.getsize(disk) == 32 << 20


def test_iperf3_server_report_names_the_client_it_served() -> None:
    text = (DATA / "iperf3-3.12-server-loopback.json").read_text()
    r = burnin.parse_iperf3(text)
    assert r["received_mbps"] == 22534.4 and r["tool"] == "iperf 3.12"
    assert burnin.iperf3_client(text) == "127.0.0.1"
    assert burnin.iperf3_client("not json") is None
    assert burnin.iperf3_client(json.dumps({"start": {"accepted_connection": {"host": 7}}})) is None


def test_serve_arguments_are_checked_before_anything_runs() -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3 (Debian package iperf3)")
    with pytest.raises(CommandError, match="bind must be an IP address"):
        burnin.run({"kind": "network_serve", "bind": "host; rm -rf /"}, Context(), no_progress)
    with pytest.raises(CommandError, match="port must be an integer from 1024"):
        burnin.run({"kind": "network_serve", "port": 80}, Context(), no_progress)


def test_a_server_nobody_connects_to_fails_with_its_own_reason() -> None:
    with pytest.raises(CommandError, match=r"^iperf3 server on 127.0.0.1:5: no client came within 0.3 s$"):
        burnin.run_tool(
            ["sleep", "30"], 0.3, timed_out="iperf3 server on 127.0.0.1:5: no client came within 0.3 s"
        )


def test_real_iperf3_pair_server_and_client_on_loopback() -> None:
    """The serve runner and the client runner against each other, as two agents run them."""
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3 (Debian package iperf3)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served: dict[str, Any] = {}
    serve = {"kind": "network_serve", "bind": "127.0.0.1", "port": port, "seconds": 30}
    server = threading.Thread(target=lambda: served.update(burnin.run(serve, Context(), no_progress)))
    server.start()
    # No wait for the server to listen: the client retries a refused connection when it has a partner.
    client = {"kind": "network", "server": "127.0.0.1", "port": port, "seconds": 1, "partner": "a"}
    r = burnin.run(client, Context(), no_progress)
    server.join(40)
    assert r["network"]["received_mbps"] > 1
    got = served["network_serve"]
    assert got["client"] == "127.0.0.1" and got["port"] == port and got["bind"] == "127.0.0.1"
    assert got["received_mbps"] > 1
