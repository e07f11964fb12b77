"""The dashboard following a real network boot: a lab QEMU VM (SeaBIOS + iPXE) powered on from the
node page in headless chromium, its DHCP, TFTP/HTTP fetches and its serial console arriving live.

The lab's bootforge serve listens inside a network namespace with http_basic auth; the browser reaches
it through the lab's loopback forwarder, logs in with the lab's htpasswd user and never reloads the
page while the VM boots into the lab's probe ramdisk (which calls the API and prints a marker).
Screenshots go under the test's tmp dir (path printed).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.lab import BOOT_TIMEOUT, LabFactory
from test_web_browser import _browser

from bootforge.lab.lab import USER
from bootforge.lab.ramdisk import API_MARKER

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]


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
        wait = WebDriverWait(driver, 30)
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

        boot = WebDriverWait(driver, BOOT_TIMEOUT)
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
