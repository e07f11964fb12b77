"""Dashboard fleet view at scale: how fast /ui/ answers with N nodes (10,000 by default).

Fills a fresh state dir's database with N fake-hardware nodes and one port each (bulk inserts, the
fast way in), starts `bootforge serve` on 127.0.0.1 (noauth, a free port), then times over HTTP:
the fleet's first page, a filtered page, a MAC search, a late page and the live refresh fragment
(each 20 times, median and worst), and, when Debian's chromium and Selenium are there, the browser's
first paint and DOMContentLoaded of /ui/. Stops the server by PID and deletes the temp dir.

    .venv/bin/python bench/web_fleet.py            # N=10000
    .venv/bin/python bench/web_fleet.py --nodes 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import insert

from bootforge.db.engine import Database
from bootforge.db.models import Node, Port

BOOTFORGE = str(Path(sys.executable).parent / "bootforge")
STATES = ("available", "active", "manageable", "deploy failed", "enroll")
TARGET_S = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(state_dir: Path, n: int) -> None:
    db = Database(f"sqlite+aiosqlite:///{state_dir / 'bootforge.sqlite'}")
    await db.migrate()
    nodes = []
    for i in range(n):
        nodes.append(
            {
                "uuid": str(uuid.uuid4()),
                "name": f"rack{i // 40:03d}-node{i % 40:02d}",
                "driver": "fake-hardware",
                "provision_state": STATES[i % len(STATES)],
                "power_state": "power on" if i % 2 else "power off",
                "maintenance": i % 97 == 0,
                "resource_class": "gold" if i % 3 == 0 else "silver",
                "conductor_group": "",
                "last_error": "deploy timed out" if STATES[i % len(STATES)] == "deploy failed" else None,
            }
        )
    async with db.write() as s:
        for start in range(0, n, 2000):
            await s.execute(insert(Node), nodes[start : start + 2000])
        await s.commit()
    async with db.write() as s:
        ids = [(i + 1) for i in range(n)]
        ports = [
            {
                "uuid": str(uuid.uuid4()),
                "address": "52:54:" + ":".join(f"{(i >> shift) & 255:02x}" for shift in (24, 16, 8, 0)),
                "node_id": node_id,
                "pxe_enabled": True,
            }
            for i, node_id in enumerate(ids)
        ]
        for start in range(0, n, 2000):
            await s.execute(insert(Port), ports[start : start + 2000])
        await s.commit()
    await db.close()


def timed(client: httpx.Client, path: str, times: int = 20) -> tuple[float, float, int]:
    seconds = []
    size = 0
    for _ in range(times):
        t = time.perf_counter()
        r = client.get(path)
        seconds.append(time.perf_counter() - t)
        r.raise_for_status()
        size = len(r.content)
    return statistics.median(seconds), max(seconds), size


def browser_paint(url: str) -> tuple[float, float] | None:
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=options)
    try:
        driver.get(url + "/ui/")  # warm: the browser's own start-up is not the page's
        driver.get(url + "/ui/")
        paint = driver.execute_script(
            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
            "const n = performance.getEntriesByType('navigation')[0];"
            "return [p ? p.startTime : -1, n.domContentLoadedEventEnd];"
        )
        return float(paint[0]) / 1000, float(paint[1]) / 1000
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bootforge-web-bench-"))
    state = tmp / "state"
    state.mkdir(mode=0o700)
    proc: subprocess.Popen[bytes] | None = None
    try:
        t = time.perf_counter()
        asyncio.run(fill(state, args.nodes))
        print(f"filled {args.nodes} nodes + ports in {time.perf_counter() - t:.1f} s")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
        env.update(BOOTFORGE_ENABLED_HARDWARE_TYPES='["fake-hardware"]', BOOTFORGE_POWER_SYNC_INTERVAL="0")
        with open(tmp / "serve.log", "wb") as log:
            proc = subprocess.Popen(
                [BOOTFORGE, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=10) as client:
            while True:
                try:
                    if client.get("/").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    print((tmp / "serve.log").read_text()[-2000:])
                    return 1
                time.sleep(0.1)
            worst_first = 0.0
            for label, path in (
                ("fleet first page", "/ui/"),
                ("filter state+maintenance", "/ui/?provision_state=deploy+failed&maintenance=false"),
                ("search by MAC prefix", "/ui/?q=52:54:00:00:1"),
                ("search by name", "/ui/?q=rack123"),
                ("page 150", "/ui/?page=150"),
                ("refresh fragment", "/ui/fleet/rows?page=1"),
            ):
                median, worst, size = timed(client, path)
                worst_first = max(worst_first, worst) if path == "/ui/" else worst_first
                print(
                    f"{label:28s} median {median * 1000:7.1f} ms  worst {worst * 1000:7.1f} ms  {size} bytes"
                )
        paint = browser_paint(url)
        if paint:
            fcp = f"{paint[0] * 1e3:.0f} ms" if paint[0] >= 0 else "not reported"
            print(f"chromium first contentful paint {fcp}, DOMContentLoaded {paint[1] * 1e3:.0f} ms")
        else:
            print("chromium/selenium not available: browser paint not measured")
        ok = worst_first <= TARGET_S and (paint is None or paint[0] <= TARGET_S)
        print(f"target: first page <= {TARGET_S:.0f} s at {args.nodes} nodes: {'PASS' if ok else 'MISS'}")
        return 0 if ok else 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
