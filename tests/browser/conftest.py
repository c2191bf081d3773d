"""A real Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, against a real
`kiln api` and worker. Screenshots of each page go to test-artifacts/browser/ (git-ignored)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.client import KilnClient
from tests.conftest import build_stack
from tests.support import drop_database, start_api_and_worker

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver"


@pytest.fixture(scope="module")
def dashboard(services, tmp_path_factory):
    """An isolated stack: small chunks (a long job is many chunks), webhooks to localhost."""
    stack, name = build_stack(services, tmp_path_factory.mktemp("ui"),
                              KILN_TUNING__CHUNK_ROWS="200", KILN_TUNING__BATCH_SIZE="64",
                              KILN_WORKER_CONCURRENCY="1", KILN_WEBHOOK_ALLOW_PRIVATE="true",
                              KILN_WEBHOOK_RETRY_SCHEDULE_SECONDS="0,0.5,0.5")
    stack.add_digits()
    # generous: on a loaded 2-core machine importing the app alone has taken 10 s
    api, worker = start_api_and_worker(stack.env, stack.logdir, timeout=120)
    yield stack, api
    worker.stop()
    api.stop()
    drop_database(services.admin_url, name)


@pytest.fixture(scope="module")
def tenant(dashboard):
    """The first tenant: its key, and an API client to arrange what the browser then sees."""
    stack, api = dashboard
    key = stack.create_key("ui-first")
    client = KilnClient(api.url, key)
    yield key, client
    client.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium; missing, the test fails with the command that installs it (never a
    silent skip)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(f"Chromium is not installed: run `{INSTALL}` (as root), or `make test`")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    driver.downloads = downloads
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
