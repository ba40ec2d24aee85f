"""Headless Chromium for tests (Debian `chromium` + `chromium-driver`, installed by `make setup` as root).

Outside CI a missing browser skips the test; in CI (CI=true) it fails, so the check cannot go silently missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def chromium(tmp_path: Path):
    driver_path, browser = shutil.which("chromedriver"), shutil.which("chromium")
    if not (driver_path and browser):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromium-driver are missing; make setup installs them (apt, as root)")
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1300,2000",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)
