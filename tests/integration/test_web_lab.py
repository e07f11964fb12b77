"""The dashboard following a real network boot: a lab QEMU VM (SeaBIOS + iPXE) powered on from the
node page in headless chromium, its DHCP, TFTP/HTTP fetches and its serial console arriving live.

The lab's bootforge serve listens inside a network namespace with http_basic auth; the browser reaches
it through the lab's loopback forwarder, logs in with the lab's htpasswd user and never reloads the
page while the VM boots into the lab's probe ramdisk (which calls the API and prints a marker).
Screenshots go under the test's tmp dir (path printed).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.lab import BOOT_TIMEOUT, RAMDISK_TIMEOUT, LabFactory, LabHandle
from test_web_browser import _browser

from bootforge.lab.lab import USER
from bootforge.lab.ramdisk import API_MARKER
from bootforge.lab.sample_os import BOOTED_MARKER, USER_DATA_MARKER, build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]


def _stale() -> tuple[type[Exception], ...]:
    """What waits ignore: the node page re-renders its summary as events arrive, so an element found
    a moment ago may be gone when it is read; the wait reads it again."""
    try:
        from selenium.common.exceptions import StaleElementReferenceException
    except ImportError:
        return ()
    return (StaleElementReferenceException,)


def login(driver: Any, h: LabHandle) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(h.lab.state.url + "/ui/login")
    driver.find_element(By.ID, "user").send_keys(USER)
    driver.find_element(By.ID, "password").send_keys(h.lab.state.password)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 30, ignored_exceptions=_stale()).until(
        ec.presence_of_element_located((By.ID, "fleet-rows"))
    )


def test_power_on_from_the_dashboard_follows_the_boot(make_lab: LabFactory, tmp_path: Path) -> None:
    h = make_lab(vms=1, firmware="bios")
    rec = h.vms[0]
    h.serve_ramdisk(rec)
    driver = _browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        wait = WebDriverWait(driver, 30, ignored_exceptions=_stale())
        driver.get(h.lab.state.url + "/ui/login")
        driver.find_element(By.ID, "user").send_keys(USER)
        driver.find_element(By.ID, "password").send_keys(h.lab.state.password)
        driver.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-uuid="{rec.node}"]')))
        driver.get(f"{h.lab.state.url}/ui/nodes/{rec.node}")
        driver.find_element(By.ID, "act-power-on").click()
        wait.until(ec.alert_is_present()).accept()
        wait.until(ec.presence_of_element_located((By.ID, "timeline")))
        driver.execute_script("window.bootforgeNotReloaded = true")

        boot = WebDriverWait(driver, BOOT_TIMEOUT, ignored_exceptions=_stale())
        boot.until(ec.text_to_be_present_in_element((By.ID, "console"), API_MARKER))
        # The chain as the timeline shows it: the DHCP exchange, iPXE's script and the ramdisk's files.
        rows = driver.find_element(By.ID, "timeline").text
        for pattern in (r"dhcp", r"http GET /boot/ipxe 200", r"http GET /bootforge/vmlinuz 200"):
            assert re.search(pattern, rows), (pattern, rows[-3000:])
        console = driver.find_element(By.ID, "console").text
        assert "iPXE" in console, console[-2000:]
        assert driver.execute_script("return window.bootforgeNotReloaded === true"), "the page reloaded"
        assert h.lab.state.password not in driver.page_source
        driver.save_screenshot(str(shots / "node-lab-boot.png"))
    except BaseException:
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        raise
    finally:
        driver.quit()


def test_provide_and_deploy_from_the_dashboard_to_active(make_lab: LabFactory, tmp_path: Path) -> None:
    """provide (the agent ramdisk cleans), then deploy the sample OS with user data, both asked for on
    the node page; the page follows each to its state and the console to the OS printing the data."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the sample OS image")
    image = build_test_os()
    h = make_lab(vms=1, firmware="bios", memory_mib=768, ramdisk="agent")
    rec = h.vms[0]
    r = h.api.post("/v1/images", json={"name": "sample-os", "source": str(image)})
    assert r.status_code == 201, r.text
    driver = _browser()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def state_is(want: str) -> Any:
        return lambda d: d.find_element(By.ID, "provision-state").text.strip() == want

    try:
        login(driver, h)
        driver.get(f"{h.lab.state.url}/ui/nodes/{rec.node}")
        wait = WebDriverWait(driver, 30, ignored_exceptions=_stale())
        driver.find_element(By.ID, "act-provide").click()
        wait.until(ec.alert_is_present()).accept()
        wait.until(ec.presence_of_element_located((By.ID, "timeline")))
        driver.execute_script("window.bootforgeNotReloaded = true")
        WebDriverWait(driver, RAMDISK_TIMEOUT, ignored_exceptions=_stale()).until(state_is("available"))
        assert driver.execute_script("return window.bootforgeNotReloaded === true"), "the page reloaded"
        timeline = driver.find_element(By.ID, "timeline").text
        assert "agent looked up from" in timeline, timeline[-3000:]

        # The summary (and with it the deploy form) was refreshed live when the node became available.
        user_data = f"hello from the dashboard {uuid.uuid4().hex[:8]}"
        Select(wait.until(ec.presence_of_element_located((By.NAME, "image")))).select_by_value("sample-os")
        driver.find_element(By.NAME, "user_data").send_keys(user_data)
        driver.find_element(By.ID, "act-deploy").click()
        wait.until(ec.alert_is_present()).accept()
        wait.until(ec.presence_of_element_located((By.ID, "timeline")))
        driver.execute_script("window.bootforgeNotReloaded = true")
        WebDriverWait(driver, RAMDISK_TIMEOUT, ignored_exceptions=_stale()).until(state_is("active"))
        WebDriverWait(driver, 180, ignored_exceptions=_stale()).until(
            ec.text_to_be_present_in_element((By.ID, "console"), USER_DATA_MARKER + user_data)
        )
        assert BOOTED_MARKER in driver.find_element(By.ID, "console").text
        assert driver.execute_script("return window.bootforgeNotReloaded === true"), "the page reloaded"
        assert "handoff seen" in driver.find_element(By.ID, "timeline").text
        # The user data is in the config drive, which the page never shows.
        assert user_data not in driver.find_element(By.ID, "field-instance_info").text
        driver.save_screenshot(str(shots / "node-lab-deploy.png"))
    except BaseException:
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        raise
    finally:
        driver.quit()
