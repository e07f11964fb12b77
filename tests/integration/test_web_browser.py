"""The dashboard in a real browser: Debian's headless chromium driven by Selenium (chromium-driver),
against a real `bootforge serve` on loopback with http_basic auth and fake-hardware enabled.

Logs in with the htpasswd's user, finds the node in the fleet, opens it, asks for `manage` (accepting
the confirmation), and sees, without the page reloading, the state reach `manageable`, the timeline
row of that transition arrive and the console log's new lines appear. A second node's maintenance set
through the API shows in the fleet view without a reload. A redfish node whose BMC does not answer
fails `manage`, and a fake node whose ramdisk preparation is refused (the fake boot interface's
test-only `fake_boot_error`) fails a deploy started from the page's form: both pages show the
diagnosis and highlight the failing timeline row. Screenshots are kept under the test's tmp dir (the
path is printed).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from support.service import Served, free_port, served

pytestmark = pytest.mark.slow


def _stale() -> tuple[type[Exception], ...]:
    """What waits ignore: the node page re-renders its summary as events arrive, so an element found
    a moment ago may be gone when it is read; the wait reads it again."""
    try:
        from selenium.common.exceptions import StaleElementReferenceException
    except ImportError:
        return ()
    return (StaleElementReferenceException,)


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


@contextmanager
def _session(server: Served, tmp_path: Path) -> Iterator[tuple[Any, Path, httpx.Client]]:
    """A headless browser, a screenshot directory and an API client (the operator's, at 1.78: a new
    node stays in enroll); on failure the page's screenshot and HTML are kept, then all is closed."""
    driver = _browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    latest = {"X-OpenStack-Ironic-API-Version": "1.78"}
    api = httpx.Client(base_url=server.url, auth=("operator", PASSWORD), headers=latest, timeout=10)
    try:
        yield driver, shots, api
    except BaseException:
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        print(f"failure screenshot and page: {shots}")
        raise
    finally:
        api.close()
        driver.quit()


def _log_in(driver: Any, wait: Any) -> None:
    """Fill the login form the browser is on (or was sent to) with the htpasswd's user."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait.until(ec.presence_of_element_located((By.ID, "password")))
    driver.find_element(By.ID, "user").send_keys("operator")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()


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
        # The failing deploy's ramdisk preparation takes this long: the page shows `deploying` first.
        "BOOTFORGE_FAKE_DELAYS__BOOT": "3",
        "BOOTFORGE_POWER_SYNC_INTERVAL": "0",
    }
    yield from served(tmp_path, env=env)


def test_login_fleet_node_action_live(server: Served, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with _session(server, tmp_path) as (driver, shots, api):
        node = api.post("/v1/nodes", json={"driver": "fake-hardware", "name": "web-n1"}).json()
        other = api.post("/v1/nodes", json={"driver": "fake-hardware", "name": "web-n2"}).json()
        r = api.post("/v1/ports", json={"node_uuid": node["uuid"], "address": "52:54:00:00:00:42"})
        assert r.status_code == 201, r.text
        console = server.state_dir / "console" / f"{node['uuid']}.log"
        console.parent.mkdir(parents=True, exist_ok=True)
        console.write_text("SeaBIOS (version 1.16)\n")
        wait = WebDriverWait(driver, WAIT, ignored_exceptions=_stale())

        driver.get(server.url + "/ui/")
        wait.until(ec.presence_of_element_located((By.ID, "password")))
        assert driver.current_url.endswith("/ui/login")  # sent to the login form
        _log_in(driver, wait)
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


def test_a_failed_verification_shows_its_diagnosis(server: Served, tmp_path: Path) -> None:
    """A redfish BMC on a closed loopback port: manage fails, the page says why and marks the row."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    info = {
        "redfish_address": f"https://127.0.0.1:{free_port()}",
        "redfish_username": "admin",
        "redfish_password": "pw-never-shown",
    }
    with _session(server, tmp_path) as (driver, shots, api):
        r = api.post("/v1/nodes", json={"driver": "redfish", "name": "bmc-dead", "driver_info": info})
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        wait = WebDriverWait(driver, 90, ignored_exceptions=_stale())
        driver.get(server.url + "/ui/login")
        _log_in(driver, wait)
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


def _wait_provision_state(api: httpx.Client, uuid: str, state: str, timeout: float = 60) -> None:
    """Poll the API until the node reaches `state` (setup for the browser part, not what is checked)."""
    deadline = time.monotonic() + timeout
    while True:
        node = api.get(f"/v1/nodes/{uuid}").json()
        if node["provision_state"] == state and not node["target_provision_state"]:
            return
        assert time.monotonic() < deadline, f"node stayed in {node['provision_state']}: {node['last_error']}"
        time.sleep(0.2)


def test_a_failed_deploy_shows_its_diagnosis(server: Served, tmp_path: Path) -> None:
    """A deploy from the page's form whose ramdisk boot is refused: the page follows it to `deploy failed`
    without a reload, says why, and marks the failing row."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    refused = "virtual media insert refused by the BMC"
    with _session(server, tmp_path) as (driver, shots, api):
        image = b"\0" * 510 + b"\x55\xaa" + b"\1" * 512  # a raw disk with an MBR signature
        r = api.put("/v1/images/tiny/file", content=image)
        assert r.status_code == 201, r.text
        info = {"fake_boot_error": refused}
        r = api.post("/v1/nodes", json={"driver": "fake-hardware", "name": "deploy-f1", "driver_info": info})
        assert r.status_code == 201, r.text
        uuid = r.json()["uuid"]
        for verb, state in (("manage", "manageable"), ("provide", "available")):
            api.put(f"/v1/nodes/{uuid}/states/provision", json={"target": verb}).raise_for_status()
            _wait_provision_state(api, uuid, state)

        # The summary is re-rendered as events arrive: an element read mid-swap is stale, read it again.
        wait = WebDriverWait(driver, WAIT, ignored_exceptions=_stale())
        driver.get(server.url + "/ui/login")
        _log_in(driver, wait)
        wait.until(ec.presence_of_element_located((By.ID, "fleet-rows")))
        driver.get(f"{server.url}/ui/nodes/{uuid}")
        wait.until(lambda d: d.find_element(By.ID, "provision-state").text.strip() == "available")
        form = driver.find_element(By.CSS_SELECTOR, "form.deploy")
        assert "tiny" in form.find_element(By.NAME, "image").text
        form.find_element(By.NAME, "user_data").send_keys("#cloud-config\nhostname: deploy-f1\n")
        driver.find_element(By.ID, "act-deploy").click()
        alert = wait.until(ec.alert_is_present())
        assert "Deploy" in alert.text
        alert.accept()
        # The POST answers with the node page again; from here on nothing reloads it.
        wait.until(ec.presence_of_element_located((By.ID, "timeline")))
        driver.execute_script("window.bootforgeNotReloaded = true")
        wait.until(ec.text_to_be_present_in_element((By.ID, "provision-state"), "deploying"))
        wait.until(lambda d: d.find_element(By.ID, "provision-state").text.strip() == "deploy failed")
        failing = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#timeline tr.failing")))
        assert "deploying -> deploy failed (fail)" in failing.text
        assert refused in failing.text

        def diagnosis_shown(d: Any) -> tuple[str, str] | None:
            diagnosis = d.find_element(By.ID, "diagnosis")
            if "status-failed" not in (diagnosis.get_attribute("class") or ""):
                return None
            return diagnosis.text, diagnosis.find_element(By.CSS_SELECTOR, ".cause").text

        text, cause = wait.until(diagnosis_shown)
        assert text.startswith("failed")
        assert "the attempt failed before the machine was powered into the ramdisk" in text
        assert "Likely cause: the BMC call (boot device, power on) or the step's preparation failed" in cause
        assert refused in cause
        wait.until(ec.text_to_be_present_in_element((By.ID, "last-error"), refused))
        assert driver.execute_script("return window.bootforgeNotReloaded === true"), "the page reloaded"
        shown = api.get(f"/v1/nodes/{uuid}").json()
        assert shown["instance_info"]["image_source"] == "tiny"
        # The diagnosis and the highlighted row in one picture.
        row = driver.find_element(By.CSS_SELECTOR, "#timeline tr.failing")
        driver.execute_script("arguments[0].scrollIntoView({block: 'end'})", row)
        driver.save_screenshot(str(shots / "deploy-failed.png"))
        assert (shots / "deploy-failed.png").stat().st_size > 0
