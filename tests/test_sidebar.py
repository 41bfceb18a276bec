"""The JupyterLab sidebar in headless Chromium, against a real server and real jobs."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from test_magics import LISTENING_CELL

CHROMIUM = os.environ.get("AIGRID_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "sidebar.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


@pytest.fixture
def page(server):
    """A fresh browser per test: Playwright's loop must not outlive the test, or
    pytest-jupyter's loop fixture would find it running."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{server.url}lab?token={server.token}&reset")
        page.wait_for_selector("#jupyterlab-splash", state="detached")
        page.locator('.jp-SideBar [data-id="jupyter-aigrid-panel"]').click()
        page.wait_for_selector("#jupyter-aigrid-panel .aigrid-tabs")
        yield page
        browser.close()


def panel(page):
    return page.locator("#jupyter-aigrid-panel")


def seen_states(page, until: str, timeout_s: float = 90.0) -> list[str]:
    """The states the open job detail shows, in order, until ``until``: no reload between."""
    states: list[str] = []
    deadline = time.monotonic() + timeout_s
    badge = panel(page).locator(".aigrid-detail .aigrid-state")
    while time.monotonic() < deadline:
        text = (badge.get_attribute("title", timeout=5_000) or "").strip()
        if text and (not states or states[-1] != text):
            states.append(text)
        if text == until:
            return states
        page.wait_for_timeout(100)
    raise AssertionError(f"the job never showed {until!r}; it showed {states}")


def test_submit_watch_detail_and_cancel(page, server, tmp_path):
    client = server.client()
    blocker = client.submit({"code": "import time; time.sleep(120)", "gpus": 4, "name": "blocker"})
    page.evaluate("window.__aigrid_no_reload = true")

    # Submit through the form: a job that has to wait for the blocker.
    panel(page).locator('.aigrid-tab[data-tab="submit"]').click()
    form = panel(page).locator("form.aigrid-form")
    form.locator('input[name="name"]').fill("from-the-sidebar")
    form.locator('textarea[name="code"]').fill(
        "import time\nprint('hello from the sidebar', flush=True)\ntime.sleep(2)\n"
    )
    form.locator('input[name="gpus"]').fill("2")
    form.locator("button.aigrid-submit").click()
    detail = panel(page).locator(".aigrid-detail")
    detail.wait_for()
    assert detail.locator(".aigrid-job-name").inner_text() == "from-the-sidebar"
    job_id = detail.get_attribute("data-job-id")
    panel(page).locator(".aigrid-detail .aigrid-state[title='queued']").wait_for()

    # Cancel the other job from its own detail.
    panel(page).locator(".aigrid-back").click()
    panel(page).locator(f'.aigrid-job[data-job-id="{blocker["id"]}"]').click()
    panel(page).locator(".aigrid-cancel").click()
    panel(page).locator(".aigrid-detail .aigrid-state[title='cancelled']").wait_for()
    assert client.job(blocker["id"])["state"] == "cancelled"

    # Back to ours: it runs and succeeds, updated live by the server's events.
    panel(page).locator(".aigrid-back").click()
    panel(page).locator(f'.aigrid-job[data-job-id="{job_id}"]').click()
    states = seen_states(page, "succeeded")
    assert (states[-1] == "succeeded" and "running" in states) or states == ["succeeded"]
    table = panel(page).locator(".aigrid-placement")
    placement = client.job(job_id)["placement"]
    for slot in placement:
        assert f"rank {slot['rank']}" in table.inner_text()
        assert slot["node"] in table.inner_text()
    panel(page).locator(".aigrid-logs", has_text="[0] hello from the sidebar").wait_for()
    assert page.evaluate("window.__aigrid_no_reload") is True  # never reloaded

    status = page.locator(".aigrid-status").inner_text()
    assert re.fullmatch(r"AI Grid: \d+ running · \d+ queued · \d+/4 GPUs", status), status

    panel(page).locator('.aigrid-tab[data-tab="cluster"]').click()
    assert "SIMULATED" in panel(page).locator(".aigrid-cluster").inner_text()
    shot = tmp_path / "sidebar.png"
    panel(page).locator('.aigrid-tab[data-tab="jobs"]').click()
    panel(page).locator(f'.aigrid-job[data-job-id="{job_id}"]').click()
    panel(page).locator(".aigrid-logs", has_text="hello from the sidebar").wait_for()
    page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 700, "height": 900})
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("AIGRID_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOT)


def test_form_shows_server_validation_errors_at_the_field(page, server):
    before = len(server.client().jobs())
    panel(page).locator('.aigrid-tab[data-tab="submit"]').click()
    form = panel(page).locator("form.aigrid-form")
    form.locator('textarea[name="code"]').fill("print(1)")
    form.locator('input[name="gpus"]').fill("-1")
    form.locator("button.aigrid-submit").click()
    error = form.locator('.aigrid-field[data-field="gpus"] .aigrid-field-error')
    error.wait_for()
    page.wait_for_function(
        "el => el.textContent.length > 0", arg=error.element_handle(), timeout=10_000
    )
    assert "gpus" in error.inner_text()
    assert len(server.client().jobs()) == before


def test_markup_in_a_job_name_is_shown_as_text(page, server):
    evil = '<img src=x onerror="window.__aigrid_pwned=1"><script>window.__aigrid_pwned=1</script>'
    job = server.client().submit({"code": "pass", "name": evil})
    panel(page).locator('.aigrid-tab[data-tab="jobs"]').click()
    name = panel(page).locator(f'.aigrid-job[data-job-id="{job["id"]}"] .aigrid-job-name')
    name.wait_for()
    assert name.inner_text() == evil
    assert panel(page).locator(".aigrid-jobs img").count() == 0
    assert page.evaluate("window.__aigrid_pwned") is None


#: A job that answers checkpoint requests, for about 30 s.
CHECKPOINTING = LISTENING_CELL


def listening_job(client, job_id: str, timeout_s: float = 90.0) -> dict:
    """The job over REST once it runs and its ranks listen for checkpoint requests."""
    deadline = time.monotonic() + timeout_s
    job = client.job(job_id)
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["state"] == "running" and (job.get("checkpoint") or {}).get("listening"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never ran listening: {job}")


def seen_migration_states(page, until: str, timeout_s: float = 120.0) -> list[str]:
    """The states the open detail's migration timeline shows, in order, until ``until``."""
    states: list[str] = []
    deadline = time.monotonic() + timeout_s
    timeline = panel(page).locator(".aigrid-detail .aigrid-migration")
    while time.monotonic() < deadline:
        text = timeline.get_attribute("data-state", timeout=5_000) if timeline.count() else None
        if text and (not states or states[-1] != text):
            states.append(text)
        if text == until:
            return states
        page.wait_for_timeout(100)
    raise AssertionError(f"the migration never showed {until!r}; it showed {states}")


def test_checkpoint_and_migrate_from_the_detail(page, server):
    from playwright.sync_api import expect

    client = server.client()
    job = client.submit({"code": CHECKPOINTING, "gpus": 1, "name": "migrate-me"})
    job_id = job["id"]
    page.evaluate("window.__aigrid_no_reload = true")

    panel(page).locator('.aigrid-tab[data-tab="jobs"]').click()
    panel(page).locator(f'.aigrid-job[data-job-id="{job_id}"]').click()
    detail = panel(page).locator(f'.aigrid-detail[data-job-id="{job_id}"]')
    detail.wait_for()
    running = listening_job(client, job_id)
    source = {slot["node"] for slot in running["placement"]}

    # Both actions become possible once the job runs and listens, shown live.
    checkpoint = detail.locator("button.aigrid-checkpoint-job")
    migrate = detail.locator("button.aigrid-migrate-job")
    expect(checkpoint).to_be_enabled(timeout=60_000)
    expect(migrate).to_be_enabled(timeout=60_000)
    expect(detail.locator('.aigrid-checkpoint dd[data-fact="listening"]')).to_contain_text("yes")

    # Checkpoint: the request shows up and ends "written".
    checkpoint.click()
    written = detail.locator(".aigrid-checkpoint dd.aigrid-request-written")
    written.wait_for(timeout=60_000)
    assert written.inner_text().startswith("written ("), written.inner_text()
    assert detail.locator(".aigrid-action-error").count() == 0
    after = client.job(job_id)["checkpoint"]
    assert after["request"]["state"] == "written", after
    assert after["latest"] is not None, after
    expect(detail.locator('.aigrid-checkpoint dd[data-fact="latest"]')).not_to_have_text("none")

    # Migrate to the other node, picked in the destination list.
    nodes = [node["name"] for node in client.cluster()["nodes"]]
    others = [name for name in nodes if name not in source]
    assert others, f"no node to move to: {nodes}, job on {source}"
    target = others[0]
    picker = detail.locator("select.aigrid-migrate-node")
    expect(picker).to_be_enabled()
    picker.select_option(target)
    expect(migrate).to_be_enabled()
    migrate.click()
    states = seen_migration_states(page, "done")
    assert detail.locator(".aigrid-action-error").count() == 0
    timeline = detail.locator(".aigrid-migration")
    assert timeline.locator(".aigrid-migration-state").get_attribute("title") == "done"
    assert "done" in timeline.locator(".aigrid-migration-state").inner_text()
    assert target in timeline.locator(".aigrid-migration-to").inner_text()
    for node in source:
        assert node in timeline.locator(".aigrid-migration-from").inner_text()
    assert "Migration #" in timeline.locator(".aigrid-migration-title").inner_text()

    moved = client.job(job_id)
    assert moved["migration"]["state"] == "done", moved["migration"]
    assert moved["migration"]["to"] == [target], moved["migration"]
    assert moved["state"] == "running", moved
    assert {slot["node"] for slot in moved["placement"]} == {target}
    assert [p["phase"] for p in moved["migration"]["phases"]] == [
        "checkpointing",
        "stopping",
        "transferring",
        "restoring",
    ]
    assert states[-1] == "done"
    assert set(states) <= {"checkpointing", "stopping", "transferring", "restoring", "done"}
    expect(detail.locator(".aigrid-placement")).to_contain_text(target)

    # Cancel it from the detail.
    detail.locator("button.aigrid-cancel").click()
    panel(page).locator(".aigrid-detail .aigrid-state[title='cancelled']").wait_for()
    assert client.job(job_id)["state"] == "cancelled"
    assert page.evaluate("window.__aigrid_no_reload") is True  # never reloaded
