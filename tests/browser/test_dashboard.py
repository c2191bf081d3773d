"""The dashboard in a real browser: each journey of the README, clicked through as a person
would, against a real API, worker, Postgres and Redis. The tests run in file order and share
one browser; each signs in (again) when it needs to."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import ARTIFACTS
from tests.integration.test_files import digits_rows, to_csv
from tests.integration.test_webhooks import RECORD, Receiver
from tests.support import wait_for

pytestmark = pytest.mark.integration
BAD_IDS = ["img-00004", "img-00100", "img-00222"]


def shot(driver, name: str) -> Path:
    """A screenshot of the page, once it has run without a script error or a CSP violation."""
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    broken = [entry["message"] for entry in driver.get_log("browser")
              if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]]
    assert not broken, broken
    return path


def until(driver, predicate, timeout: float = 60, message: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: predicate(d), message)


def css(driver, selector: str):
    return until(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector), 20,
                 f"no element {selector}")


def click(driver, selector: str) -> None:
    """Click, again if a live refresh replaced the element in between."""
    for _ in range(10):
        try:
            css(driver, selector).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.2)
    raise AssertionError(f"could not click {selector}")


def sign_in(driver, base: str, key: str) -> None:
    driver.get(f"{base}/ui/signin")
    field = css(driver, "#api_key")
    field.clear()
    field.send_keys(key)
    click(driver, "#signin")
    until(driver, lambda d: d.current_url.startswith(f"{base}/ui/jobs"), 20, "no jobs page")


def status_of(driver) -> str:
    return css(driver, "#job-live").get_attribute("data-status")


def wait_status(driver, wanted: set[str], timeout: float = 90) -> str:
    until(driver, lambda d: status_of(d) in wanted, timeout, f"job never reached {wanted}")
    return status_of(driver)


def open_job(driver, base: str, job_id: str) -> None:
    driver.get(f"{base}/ui/jobs/{job_id}")
    css(driver, "#job-live")


@pytest.fixture
def base(dashboard) -> str:
    return dashboard[1].url


@pytest.fixture
def signed_in(browser, base, tenant):
    browser.get(f"{base}/ui/jobs")
    if "/ui/signin" in browser.current_url:
        sign_in(browser, base, tenant[0])
    return browser


def test_opening_the_base_url_lands_on_sign_in_and_a_key_signs_in(browser, base, tenant):
    browser.get(base + "/")
    until(browser, lambda d: "/ui/signin" in d.current_url, 20, "not sent to sign in")
    shot(browser, "01-signin")
    css(browser, "#api_key").send_keys("kiln_deadbeef_not-a-key")
    click(browser, "#signin")
    assert "unknown or revoked" in css(browser, "#signin-error").text
    field = browser.switch_to.active_element  # by keyboard alone: the key field has focus
    assert field.get_attribute("id") == "api_key"
    field.clear()
    field.send_keys(tenant[0], Keys.ENTER)
    until(browser, lambda d: d.current_url.startswith(f"{base}/ui/jobs"), 20, "not signed in")
    assert "ui-first" in css(browser, ".tenant").text
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    cookies = {c["name"]: c for c in browser.get_cookies()}
    session = cookies["kiln_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and "expiry" in session
    assert tenant[0] not in session["value"] and tenant[0] not in browser.current_url
    stored = browser.execute_script(
        "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert tenant[0] not in stored


def test_upload_start_watch_errors_and_download(signed_in, base, tenant):
    driver = signed_in
    rows = digits_rows(300)
    for row in rows:
        row["image_id"] = row.pop("custom_id")
    for bad in BAD_IDS:
        rows[int(bad[-5:])]["p10"] = "oops"
    source = ARTIFACTS / "upload-digits.csv"
    source.write_bytes(to_csv(rows))

    driver.get(f"{base}/ui/files")
    css(driver, "#file").send_keys(str(source))
    shot(driver, "02-files")
    click(driver, "#upload")
    until(driver, lambda d: re.search(r"/ui/files/[0-9a-f-]{36}$", d.current_url), 30,
          "the upload did not land on its file page")
    columns = [o.text for o in Select(css(driver, "#id_column")).options]
    assert "image_id" in columns and "p63" in columns
    Select(css(driver, "#model")).select_by_visible_text("digits")
    Select(css(driver, "#id_column")).select_by_visible_text("image_id")
    css(driver, "input[name=keep_columns][value=truth]").click()
    css(driver, "#label").send_keys("browser-upload")
    shot(driver, "03-file-start-job")
    click(driver, "#start")
    until(driver, lambda d: "/ui/jobs/" in d.current_url, 20, "no job page")
    job_id = driver.current_url.rsplit("/", 1)[1]

    assert wait_status(driver, {"succeeded", "failed"}) == "succeeded"
    until(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".progress-line .pct")
          .get_attribute("data-pct") == "100.0", 20, "the progress bar did not reach 100 %")
    assert css(driver, "#count-completed").text == "297"
    assert css(driver, "#count-failed").text == "3"
    failed = css(driver, "#failed-rows").text
    assert all(bad in failed for bad in BAD_IDS) and "p10" in failed
    assert css(driver, "#rate-chart").get_attribute("aria-label").startswith("Rows per second")
    shot(driver, "04-job-succeeded")

    click(driver, "#download-results-csv")
    target = driver.downloads / f"{job_id}-results.csv"
    wait_for(target.exists, timeout=30, message=f"download {target.name}")
    wait_for(lambda: not list(driver.downloads.glob("*.crdownload")), timeout=30,
             message="the download to finish")
    results = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(results) == 297 and {r["image_id"] for r in results}.isdisjoint(BAD_IDS)
    assert "truth" in results[0] and "label" in results[0]

    driver.get(f"{base}/ui/jobs?q=browser-upload")
    assert [r.get_attribute("data-job-id") for r in
            driver.find_elements(By.CSS_SELECTOR, "#job-rows tr[data-job-id]")] == [job_id]
    shot(driver, "05-jobs")
    found = tenant[1].http.get("/v1/jobs", params={"search": "browser-upload"}).json()["data"]
    assert [j["id"] for j in found] == [job_id]  # the API searches with the same service

    open_job(driver, base, job_id)
    click(driver, "#retry")
    until(driver, lambda d: job_id not in d.current_url, 20, "retry did not open the child")
    assert job_id in css(driver, "#job-live").text  # "Retry of <parent>"
    assert wait_status(driver, {"succeeded", "failed"}) in {"succeeded", "failed"}
    assert css(driver, "#count-total").text == "3" and css(driver, "#count-failed").text == "3"
    assert all(bad in css(driver, "#failed-rows").text for bad in BAD_IDS)
    shot(driver, "06-job-retried")


def test_cancel_a_long_job(signed_in, base, tenant):
    driver, client = signed_in, tenant[1]
    total = 150_000  # 750 chunks of 200 rows on one worker process: far longer than a click
    data = to_csv(digits_rows(total))
    uploaded = client.http.post("/v1/files", files={"file": ("long.csv", data)})
    assert uploaded.status_code == 201, uploaded.text
    job = client.submit_file("digits", uploaded.json()["id"])
    open_job(driver, base, job["id"])
    before = client.http.get(f"/v1/jobs/{job['id']}").json()
    click(driver, "#cancel")
    try:
        wait_status(driver, {"cancelled"}, 60)
    except TimeoutException:
        after = client.http.get(f"/v1/jobs/{job['id']}").json()
        raise AssertionError(f"not cancelled: before the click {before['status']} "
                             f"{before['request_counts']}, now {after['status']} "
                             f"{after['request_counts']}, page says {status_of(driver)}") from None
    done = client.http.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "cancelled"
    assert done["request_counts"]["completed"] < total
    assert not driver.find_elements(By.CSS_SELECTOR, "#cancel")
    shot(driver, "07-job-cancelled")
    driver.get(f"{base}/ui/jobs")
    Select(css(driver, "#status")).select_by_visible_text("cancelled")
    click(driver, "#filter")
    until(driver, lambda d: "status=cancelled" in d.current_url, 20, "the filter was not sent")
    listed = until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#job-rows tr[data-job-id]"),
                   20, "no cancelled job listed")
    assert [r.get_attribute("data-job-id") for r in listed] == [job["id"]]


def test_redeliver_a_webhook(signed_in, base, tenant):
    driver, client = signed_in, tenant[1]
    with Receiver() as receiver:
        job = client.submit("digits", [RECORD], webhook_url=receiver.url)
        first = receiver.wait(1)[0]
        open_job(driver, base, job["id"])
        until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#deliveries .redeliver"), 30,
              "no delivery listed")
        shot(driver, "08-job-webhooks")
        click(driver, "#deliveries .redeliver")
        second = receiver.wait(2)[1]
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.payload == first.payload
    driver.get(driver.current_url)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#deliveries tr[data-delivery-id]")) == 2


def test_models_webhooks_and_usage_pages(signed_in, base):
    driver = signed_in
    driver.get(f"{base}/ui/models")
    assert "digits" in css(driver, "main").text and "latest" in css(driver, "main").text
    shot(driver, "09-models")

    driver.get(f"{base}/ui/webhooks")
    css(driver, "#url").send_keys("http://127.0.0.1:9/hooks")
    css(driver, "input[name=events][value='job.failed']").click()
    click(driver, "#create-webhook")
    created = css(driver, "#shown-secret").text
    assert created.startswith("whsec_")
    click(driver, "#endpoints .rotate")
    rotated = until(driver, lambda d: (shown := d.find_element(By.CSS_SELECTOR, "#shown-secret")
                                       .text) != created and shown, 20, "no rotated secret")
    assert rotated.startswith("whsec_") and rotated != created
    shot(driver, "10-webhooks")
    driver.get(f"{base}/ui/webhooks")
    assert not driver.find_elements(By.CSS_SELECTOR, "#shown-secret")  # shown once
    assert rotated not in driver.page_source
    click(driver, "#endpoints .delete")
    until(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, "#endpoints tr[data-endpoint-id]"),
          20, "the endpoint was not deleted")

    driver.get(f"{base}/ui/usage")
    assert "digits" in css(driver, "#usage-models").text
    shot(driver, "11-usage")

    driver.set_window_size(390, 900)  # a phone
    driver.get(f"{base}/ui/jobs")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    shot(driver, "12-jobs-phone")
    driver.set_window_size(1280, 1000)
    assert width <= 400


def test_a_second_tenant_sees_none_of_the_first_tenants_objects(signed_in, base, tenant,
                                                                  dashboard):
    driver, client = signed_in, tenant[1]
    theirs = client.http.get("/v1/jobs").json()["data"][0]["id"]
    their_file = client.http.get("/v1/files").json()["data"][0]["id"]
    click(driver, "#signout")
    sign_in(driver, base, dashboard[0].create_key("ui-second"))
    assert "ui-second" in css(driver, ".tenant").text
    assert not driver.find_elements(By.CSS_SELECTOR, "#job-rows tr[data-job-id]")
    driver.get(f"{base}/ui/files")
    assert "No files yet" in css(driver, "#files").text
    for path in (f"/ui/jobs/{theirs}", f"/ui/files/{their_file}",
                 f"/ui/jobs/{theirs}/download/results"):
        driver.get(base + path)
        assert "Not found" in css(driver, "h1").text, path
    driver.get(f"{base}/ui/jobs?q={theirs}")
    assert not driver.find_elements(By.CSS_SELECTOR, "#job-rows tr[data-job-id]")
    click(driver, "#signout")


def test_sign_out_and_be_refused(signed_in, base):
    driver = signed_in
    kept = {c["name"]: c["value"] for c in driver.get_cookies()}["kiln_session"]
    with httpx.Client(base_url=base, cookies={"kiln_session": kept}) as copy:
        assert copy.get("/ui/jobs").status_code == 200  # the cookie works before sign-out
    click(driver, "#signout")
    until(driver, lambda d: "/ui/signin" in d.current_url, 20, "sign-out did not end")
    for path in ("/ui/jobs", "/ui/files", "/ui/usage"):
        driver.get(base + path)
        assert "/ui/signin" in driver.current_url and css(driver, "#api_key")
        assert not driver.find_elements(By.CSS_SELECTOR, ".tenant")
    with httpx.Client(base_url=base, cookies={"kiln_session": kept}) as copy:
        refused = copy.get("/ui/jobs")  # a copy kept from before is refused too
        assert refused.status_code == 302 and "/ui/signin" in refused.headers["Location"]


def form_token(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_forms_without_the_csrf_token_are_refused_and_headers_are_strict(base, tenant):
    key, client = tenant
    job = client.submit("digits", [RECORD] * 2, metadata={"csrf": "yes"})
    with httpx.Client(base_url=base, timeout=30) as web:
        assert web.get("/").status_code == 302 and web.get("/").headers["Location"] == "/ui/"
        page = web.get("/ui/signin")
        headers = page.headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"]
        refused = web.post("/ui/signin", data={"api_key": key})
        assert refused.status_code == 400 and "CSRF" in refused.text
        signed = web.post("/ui/signin", data={"api_key": key, "csrf_token": form_token(page.text)})
        assert signed.status_code == 302 and "kiln_session" in web.cookies
        token = form_token(web.get("/ui/jobs").text)
        for data in ({}, {"csrf_token": "forged"}):
            refused = web.post(f"/ui/jobs/{job['id']}/cancel", data=data)
            assert refused.status_code == 400
        assert web.post("/ui/signout").status_code == 400  # signing out is a form too
        assert client.http.get(f"/v1/jobs/{job['id']}").json()["status"] != "cancelled"
        assert web.get("/ui/jobs").status_code == 200  # still signed in
        done = web.post(f"/ui/jobs/{job['id']}/cancel", data={"csrf_token": token})
        assert done.status_code in (302, 409)  # 409: it ended before the cancel

        # bad input is a 4xx page, never a 500
        text = web.post("/ui/files", files={"file": ("notes.txt", b"hello")},
                        data={"csrf_token": token})
        assert text.status_code == 422 and text.headers["Content-Type"].startswith("text/html")
        good = web.post("/ui/files", files={"file": ("ok.csv", to_csv(digits_rows(5)))},
                        data={"csrf_token": token})
        assert good.status_code == 302
        file_page = good.headers["Location"]
        unknown = web.post(f"{file_page}/jobs", data={"model": "nope", "csrf_token": token})
        assert unknown.status_code == 404 and "nope" in unknown.text
