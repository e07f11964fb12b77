"""The dashboard in a real browser: Debian's headless chromium driven by Selenium (chromium-driver),
against a real `bootforge serve` on loopback with http_basic auth and fake-hardware enabled.

Logs in with the htpasswd's user, finds the node in the fleet, opens it, asks for `manage` (accepting
the confirmation), and sees, without the page reloading, the state reach `manageable`, the timeline
row of that transition arrive and the console log's new lines appear. A second node's maintenance set
through the API shows in the fleet view without a reload. Screenshots are kept under the test's tmp
dir (the path is printed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from support.service import Served, free_port, served

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PASSWORD = "dashboard horse"
WAIT = 20  # seconds for anything the page shows to appear


def _browser() -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver)"
        )
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    # Given both paths, Selenium does not look anything up or download anything.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    htpasswd = tmp_path / "htpasswd"
    digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"operator:{digest}\n")
    env = {
        "BOOTFORGE_AUTH_STRATEGY": "http_basic",
        "BOOTFORGE_HTPASSWD_FILE": str(htpasswd),
        # fake-hardware is off by default; this test enrols fakes.
        "BOOTFORGE_ENABLED_HARDWARE_TYPES": '["fake-hardware", "redfish"]',
        # Slow enough for the page to show `verifying` before `manageable` arrives live.
        "BOOTFORGE_FAKE_DELAYS__POWER": "1.5",
        "BOOTFORGE_FAKE_DELAYS__MANAGEMENT": "1.5",
        "BOOTFORGE_POWER_SYNC_INTERVAL": "0",
    }
    yield from served(tmp_path, env=env)


def test_login_fleet_node_action_live(server: Served, tmp_path: Path) -> None:
    driver = _browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # At API 1.78 a new node stays in enroll (before 1.11 it lands in available).
    latest = {"X-OpenStack-Ironic-API-Version": "1.78"}
    api = httpx.Client(base_url=server.url, auth=("operator", PASSWORD), headers=latest, timeout=10)
    try:
        node = api.post("/v1/nodes", json={"driver": "fake-hardware", "name": "web-n1"}).json()
        other = api.post("/v1/nodes", json={"driver": "fake-hardware", "name": "web-n2"}).json()
        r = api.post("/v1/ports", json={"node_uuid": node["uuid"], "address": "52:54:00:00:00:42"})
        assert r.status_code == 201, r.text
        console = server.state_dir / "console" / f"{node['uuid']}.log"
        console.parent.mkdir(parents=True, exist_ok=True)
        console.write_text("SeaBIOS (version 1.16)\n")
        wait = WebDriverWait(driver, WAIT)

        driver.get(server.url + "/ui/")
        wait.until(ec.presence_of_element_located((By.ID, "password")))
        assert driver.current_url.endswith("/ui/login")
        driver.find_element(By.ID, "user").send_keys("operator")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-uuid="{node["uuid"]}"]')))
        assert "web-n2" in driver.find_element(By.ID, "fleet-rows").text
        driver.save_screenshot(str(shots / "fleet.png"))

        # The fleet follows: maintenance set through the API shows without a reload.
        driver.execute_script("window.bootforgeNotReloaded = true")
        api.put(f"/v1/nodes/{other['uuid']}/maintenance", json={"reason": "fan"}).raise_for_status()
        wait.until(
            lambda d: (
                "maint"
                in d.find_element(By.CSS_SELECTOR, f'tr[data-uuid="{other["uuid"]}"]').get_attribute("class")
            )
        )
        assert driver.execute_script("return window.bootforgeNotReloaded === true")

        driver.find_element(By.LINK_TEXT, "web-n1").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "provision-state"), "enroll"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "console"), "SeaBIOS"))
        assert "52:54:00:00:00:42" in driver.page_source

        driver.find_element(By.ID, "act-manage").click()
        alert = wait.until(ec.alert_is_present())
        assert "manageable" in alert.text
        alert.accept()
        # The POST answers with the node page again; from here on nothing reloads it.
        wait.until(ec.presence_of_element_located((By.ID, "timeline")))
        driver.execute_script("window.bootforgeNotReloaded = true")
        wait.until(ec.text_to_be_present_in_element((By.ID, "timeline"), "enroll -> verifying (manage)"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "timeline"), "verifying -> manageable"))
        # Exactly: "verifying → manageable" (the transient state and its target) is not there yet.
        wait.until(lambda d: d.find_element(By.ID, "provision-state").text.strip() == "manageable")
        with open(console, "a") as f:
            f.write("bootforge-node login: \n")
        wait.until(ec.text_to_be_present_in_element((By.ID, "console"), "bootforge-node login:"))
        assert driver.execute_script("return window.bootforgeNotReloaded === true"), "the page reloaded"
        driver.save_screenshot(str(shots / "node.png"))
        assert (shots / "node.png").stat().st_size > 0
    except BaseException:
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        print(f"failure screenshot and page: {shots}")
        raise
    finally:
        api.close()
        driver.quit()


def test_a_failed_verification_shows_its_diagnosis(server: Served, tmp_path: Path) -> None:
    """A redfish BMC on a closed loopback port: manage fails, the page says why and marks the row."""
    driver = _browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    latest = {"X-OpenStack-Ironic-API-Version": "1.78"}
    api = httpx.Client(base_url=server.url, auth=("operator", PASSWORD), headers=latest, timeout=10)
    info = {
        "redfish_address": f"https://127.0.0.1:{free_port()}",
        "redfish_username": "admin",
        "redfish_password": "pw-never-shown",
    }
    try:
        r = api.post("/v1/nodes", json={"driver": "redfish", "name": "bmc-dead", "driver_info": info})
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        wait = WebDriverWait(driver, 90)
        driver.get(server.url + "/ui/login")
        driver.find_element(By.ID, "user").send_keys("operator")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.ID, "fleet-rows")))
        driver.get(f"{server.url}/ui/nodes/{uuid}")
        driver.find_element(By.ID, "act-manage").click()
        wait.until(ec.alert_is_present()).accept()
        wait.until(ec.presence_of_element_located((By.ID, "timeline")))
        failing = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#timeline tr.failing")))
        assert "verifying -> enroll (fail)" in failing.text
        diagnosis = driver.find_element(By.ID, "diagnosis")
        assert "status-failed" in (diagnosis.get_attribute("class") or "")
        assert "could not read the machine's power state through its BMC" in diagnosis.text
        assert "pw-never-shown" not in driver.page_source
        assert "******" in driver.find_element(By.ID, "field-driver_info").text
        driver.save_screenshot(str(shots / "failed.png"))
    except BaseException:
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        raise
    finally:
        api.close()
        driver.quit()
