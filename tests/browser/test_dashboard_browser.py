"""The dashboard in headless Chromium: live data, charts, a real retry, and CSRF refusal."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect
from served import Served

from ops_seed import state_of

pytestmark = pytest.mark.browser
SCREENSHOT = "/tmp/unbroken-dashboard.png"


@pytest.fixture
def errors() -> list[str]:
    """Script errors and failed loads the page reported; a test clears the ones it caused."""
    return []


@pytest.fixture
def page(browser: Browser, errors: list[str]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert errors == [], errors  # no script error, no failed resource


def test_pages_load_with_live_data(page: Page, served: Served) -> None:
    page.goto(served.base + "/")
    expect(page.locator(".tile", has_text="Waiting").locator(".tile-value")).to_have_text("4")
    expect(page.locator("#backlog")).to_contain_text("reports")
    expect(page.locator("#workers")).to_contain_text("silent")
    # New work appears without a reload: the live regions poll the server.
    with psycopg.connect(served.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO unbroken.jobs (queue, task) SELECT 'imports', 'csv.load'"
            " FROM generate_series(1, 5)"
        )
    expect(page.locator("#backlog")).to_contain_text("imports", timeout=10_000)
    expect(page.locator(".tile", has_text="Waiting").locator(".tile-value")).to_have_text("9")
    page.screenshot(path=SCREENSHOT, full_page=True)

    page.click("nav >> text=Jobs")
    expect(page.locator("#job-list")).to_contain_text("24 matching")
    page.fill("input[name=args]", '{"project": "ALPHA"}')
    page.click("button:has-text('Filter')")
    expect(page.locator("#job-list")).to_contain_text("1 matching")
    page.click(f"#job-list >> text={served.seeded.running}")
    expect(page.locator(".progress-meta")).to_contain_text("42.3%")
    page.click("nav >> text=Long jobs")
    expect(page.locator("#long")).to_contain_text("120.5")
    page.click("nav >> text=Dead letters")
    expect(page.locator("#dead")).to_contain_text("502 Bad Gateway")
    page.click("nav >> text=Queues")
    expect(page.locator("#queues")).to_contain_text("paused")


def test_charts_render(page: Page, served: Served) -> None:
    page.goto(served.base + "/")
    throughput = page.locator("canvas[data-chart=throughput]")
    expect(throughput).to_have_attribute("data-rendered", "60")
    expect(page.locator("canvas[data-chart=failure]")).to_have_attribute("data-rendered", "60")
    painted = throughput.evaluate(
        """c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let inked = 0, red = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 0) inked++;
                if (d[i] > 150 && d[i + 1] < 100 && d[i + 3] > 200) red++;
            }
            return {inked, red, area: c.width * c.height};
        }"""
    )
    assert painted["inked"] > painted["area"] * 0.1  # bars, not an empty canvas
    assert painted["red"] > 100  # the failure burst is drawn
    box = throughput.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] - 30, box["y"] + box["height"] / 2)
    expect(page.locator(".chart-box .tip").first).to_contain_text("ok")
    page.click(".tabs >> text=6h")
    expect(throughput).to_have_attribute("data-rendered", "72")


def test_retry_from_the_dashboard_requeues_a_dead_job(page: Page, served: Served) -> None:
    job = served.seeded.dead_hostile
    page.goto(f"{served.base}/jobs/{job}")
    expect(page.locator("#attempts")).to_contain_text("<script>alert('x')</script>")  # as text
    page.click("button:has-text('Retry now')")
    expect(page.locator(".flash")).to_contain_text(f"Job {job} queued again.")
    assert state_of(served.url, job) == "available"
    # A whole dead-letter group, through its confirmation page.
    page.goto(served.base + "/dead")
    page.locator("tr", has_text="HTTPError").locator("text=Retry…").click()
    expect(page.locator("h1")).to_contain_text("Retry 3 dead job(s)?")
    page.click("button:has-text('Yes, retry 3 job(s)')")
    expect(page.locator(".flash")).to_contain_text("Retried 3 of 3 dead job(s).")
    assert {state_of(served.url, i) for i in served.seeded.dead_http} == {"available"}
    expect(page.locator("#dead")).to_contain_text("No dead letters")


def test_an_action_without_the_csrf_token_is_refused(
    page: Page, served: Served, errors: list[str]
) -> None:
    job = served.seeded.dead_http[0]
    page.goto(f"{served.base}/jobs/{job}")
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    with page.expect_response(f"**/jobs/{job}/retry") as response:
        page.click("button:has-text('Retry now')")
    assert response.value.status == 403
    expect(page.locator("h1")).to_have_text("Refused")
    expect(page.locator(".lead")).to_contain_text("CSRF")
    # A script on the page posting without the token is refused too.
    status = page.evaluate(f"fetch('/jobs/{job}/retry', {{method: 'POST'}}).then(r => r.status)")
    assert status == 403
    assert state_of(served.url, job) == "dead"
    assert len(errors) == 2  # the browser logs both refusals
    assert all("403" in e for e in errors)
    errors.clear()
