"""The ``/ui`` dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright, no browser download) against a live gateway on loopback that has served real
traffic. The page must show the numbers the JSON API reports, list the requests that were
sent, open any of them (click, id lookup, deep link) down to its stages and upstream attempts,
and ask for the admin key when the gateway requires authentication.

Screenshots land in ``tests/artifacts/`` (ignored by git) for a human to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SIM_CONFIG, LiveGateway, make_gateway, run_live

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                               "(pip install -e '.[test]')")
expect = sync_api.expect

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
#: Playwright's own waits; everything the page shows arrives within a refresh or two.
TIMEOUT_MS = 8_000


def _chromium() -> str | None:
    """Debian's chromium, installed here when missing and this process may (root, apt-get):
    at collection, before any test's timeout runs. scripts/setup.sh normally did it already."""
    found = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which(
        "chromium")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                       env=env, check=True, timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return shutil.which("chromium")


CHROMIUM = _chromium()
if CHROMIUM is None and os.environ.get("BASTION_CI"):
    raise RuntimeError("BASTION_CI is set but chromium is missing and could not be installed: "
                       "in CI the dashboard test must run, not skip")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium at /usr/bin/chromium and it could not be installed "
    "(run scripts/setup.sh as root, or apt-get install chromium)")

PRICED = SIM_CONFIG + """
pricing:
  sim/sim-primary: {input_per_mtok: 3, output_per_mtok: 15}
  backup/sim-backup: {input_per_mtok: 1, output_per_mtok: 5}
"""
DOWN = json.dumps({"kind": "status", "status": 503, "only_model": "sim-primary"})
ALL_DOWN = json.dumps({"kind": "status", "status": 503})
MSG = [{"role": "user", "content": "hi"}]
#: A structured answer that breaks its schema once, then is repaired (tests/test_contract_http).
INVALID_ONCE = json.dumps({"kind": "invalid_output", "fail_times": 1,
                           "content": '{"priority": "urgent", "summary": "fire", "score": 1}'})
TRIAGE_FORMAT = {"type": "json_schema", "json_schema": {"name": "triage", "strict": True,
                 "schema": {"type": "object", "required": ["priority", "summary", "score"],
                            "properties": {
                                "priority": {"type": "string", "enum": ["low", "high"]},
                                "summary": {"type": "string"},
                                "score": {"type": "integer", "minimum": 1}}}}}


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A page whose console errors and uncaught exceptions are kept (a CSP violation is a
    console error), so a test can say the page ran clean."""

    def __init__(self, browser: Any, **context: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1440, "height": 1000},
                                           **context)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda exc: self.problems.append(str(exc)))

    def problems_except(self, *fragments: str) -> list[str]:
        """The problems left once the expected failed fetches (401, 404) are set aside."""
        return [p for p in self.problems
                if not any(f in p for f in fragments)]


def send(http: httpx.Client, model: str = "fast", fault: str | None = None,
         **body: Any) -> httpx.Response:
    headers = {"x-bastion-simulate": fault} if fault else {}
    return http.post("/v1/chat/completions", json={"model": model, "messages": MSG, **body},
                     headers=headers)


@pytest.fixture
def traffic() -> Iterator[tuple[LiveGateway, dict[str, str]]]:
    """A live gateway that served: three plain requests, one fallback, one unknown model, one
    stream, one structured answer repaired by its contract, and one request whose only target
    is down. Yields it with the request ids."""
    for live in run_live(make_gateway(PRICED)):
        ids: dict[str, str] = {}
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            for i in range(3):
                resp = send(http)
                assert resp.status_code == 200, resp.text
                ids[f"ok{i}"] = resp.headers["x-request-id"]
            resp = send(http, fault=DOWN)
            assert resp.status_code == 200 and resp.headers["x-bastion-fallback"] == "true"
            ids["fallback"] = resp.headers["x-request-id"]
            resp = send(http, model="no-such-model")
            assert resp.status_code == 404
            ids["not_found"] = resp.headers["x-request-id"]
            with http.stream("POST", "/v1/chat/completions",
                             json={"model": "fast", "messages": MSG, "stream": True}) as resp:
                assert resp.status_code == 200 and "[DONE]" in resp.read().decode()
                ids["stream"] = resp.headers["x-request-id"]
            resp = send(http, fault=INVALID_ONCE, response_format=TRIAGE_FORMAT)
            assert resp.status_code == 200 and resp.headers["x-bastion-contract"] == "repaired"
            ids["repaired"] = resp.headers["x-request-id"]
            resp = send(http, model="solo", fault=ALL_DOWN)
            assert resp.status_code == 503
            ids["down"] = resp.headers["x-request-id"]
        yield live, ids


def pct(rate: float) -> str:
    return "0%" if rate == 0 else f"{rate * 100:.1f}%"


def test_dashboard_shows_the_live_slo_view_and_every_request(browser, traffic) -> None:
    live, ids = traffic
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        page_resp = http.get("/ui")
        summary = http.get("/ui/api/summary", params={"window_s": 300}).json()
        listed = http.get("/ui/api/requests").json()["data"]
    assert page_resp.status_code == 200 and "text/html" in page_resp.headers["content-type"]
    assert summary["requests"] == len(ids) == 8
    assert summary["errors_by_class"] == {"model_not_found": 1, "upstream_unavailable": 1}
    assert {e["request_id"] for e in listed} == set(ids.values())

    w = Watched(browser)
    page = w.page
    page.goto(live.base_url + "/ui")

    # the tiles: the same numbers as the JSON API
    expect(page.locator("#v-requests")).to_have_text(str(len(ids)))
    expect(page.locator("#v-error-rate")).to_have_text(pct(summary["error_rate"]))
    expect(page.locator("#v-fallback-rate")).to_have_text(pct(summary["fallback_rate"]))
    for tile, key in (("#v-p50", "p50"), ("#v-p95", "p95"), ("#v-p99", "p99")):
        value = float(page.locator(tile).get_attribute("data-value"))
        assert value == pytest.approx(summary["latency_ms"][key])
    assert float(page.locator("#v-ttft").get_attribute("data-value")) == pytest.approx(
        summary["ttft_ms"]["p95"])
    assert summary["cost_usd"] > 0
    assert float(page.locator("#v-cost").get_attribute("data-value")) == pytest.approx(
        summary["cost_usd"])
    expect(page.locator("#config-hash")).to_have_text(summary["config"])
    expect(page.locator("#v-cache")).to_have_text("—")  # no lookup: nothing deterministic

    # errors by class, cost by tenant, a badge per breaker
    errors = page.get_by_test_id("errors-by-class")
    for cls, n in summary["errors_by_class"].items():
        expect(errors.locator(f'tr[data-error-class="{cls}"] td').nth(1)).to_have_text(str(n))
    tenants = page.get_by_test_id("cost-by-tenant")
    expect(tenants.locator('tr[data-tenant="default"] td').nth(1)).to_have_text(str(len(ids)))
    badges = page.get_by_test_id("breaker")
    expect(badges).to_have_count(len(summary["breakers"]))
    for target, state in summary["breakers"].items():
        expect(page.locator(f'[data-testid="breaker"][data-target="{target}"]')
               ).to_have_attribute("data-state", state)

    # the chart has bars; the recent table lists every request sent, newest first
    assert page.locator("#chart rect.bar.req").count() >= 1
    rows = page.get_by_test_id("request-row")
    expect(rows).to_have_count(len(ids))
    assert [rows.nth(i).get_attribute("data-request-id") for i in range(len(ids))] == [
        e["request_id"] for e in listed]
    expect(page.locator(f'tr[data-request-id="{ids["not_found"]}"]')).to_contain_text(
        "model_not_found")
    expect(page.locator(f'tr[data-request-id="{ids["fallback"]}"]')).to_contain_text(
        "fallback")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-dashboard.png"), full_page=True)

    # a click opens the fallback request: three failed tries on the primary, then the backup
    page.locator(f'tr[data-request-id="{ids["fallback"]}"]').click()
    drawer = page.get_by_test_id("drilldown")
    expect(drawer).to_be_visible()
    expect(drawer).to_have_attribute("data-state", "loaded")
    expect(page.get_by_test_id("dd-request-id")).to_have_text(ids["fallback"])
    attempts = drawer.get_by_test_id("attempt")
    expect(attempts).to_have_count(4)
    for i in range(3):
        expect(attempts.nth(i)).to_have_attribute("data-target", "sim/sim-primary")
        expect(attempts.nth(i)).to_have_attribute("data-outcome", "upstream_unavailable")
    expect(attempts.nth(3)).to_have_attribute("data-target", "backup/sim-backup")
    expect(attempts.nth(3)).to_have_attribute("data-outcome", "ok")
    expect(drawer.get_by_test_id("wf-attempt")).to_have_count(4)
    stages = drawer.get_by_test_id("wf-stage")
    expect(stages.first).to_be_visible()
    assert {"admission", "route"} <= {t.strip() for t in
                                      stages.locator(".wf-label").all_inner_texts()}
    overview = drawer.get_by_test_id("dd-overview")
    expect(overview.locator("dd").filter(has_text="backup/sim-backup")).to_have_count(1)
    expect(overview).not_to_contain_text("[object")
    expect(drawer.get_by_test_id("dd-tokens")).to_have_text(re.compile(r"\d+ in · \d+ out"))
    assert page.evaluate("location.hash") == "#" + ids["fallback"]
    page.set_viewport_size({"width": 1440, "height": 1250})
    expect(drawer.get_by_test_id("dd-attempts")).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "ui-drilldown.png"))
    page.set_viewport_size({"width": 1440, "height": 1000})
    # every part is an element: no stray text (a null or an array rendered as a string)
    assert page.evaluate("[...document.getElementById('dd-body').childNodes]"
                         ".every(n => n.nodeType === 1)")

    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()
    assert page.evaluate("location.hash") == ""

    # the id lookup: a request that never reached a target
    page.get_by_test_id("lookup-id").fill(ids["not_found"])
    page.get_by_test_id("lookup-id").press("Enter")
    expect(page.get_by_test_id("dd-request-id")).to_have_text(ids["not_found"])
    expect(drawer.get_by_test_id("no-attempts")).to_be_visible()
    expect(drawer).to_contain_text("model_not_found")
    page.get_by_test_id("dd-close").click()
    expect(drawer).to_be_hidden()

    # errors only: the two failed requests
    page.get_by_test_id("filter-errors").check()
    expect(rows).to_have_count(2)
    assert {rows.nth(i).get_attribute("data-request-id") for i in range(2)} == {
        ids["not_found"], ids["down"]}
    page.get_by_test_id("filter-errors").uncheck()
    page.get_by_test_id("filter-tenant").fill("nobody")
    expect(rows).to_have_count(0)
    expect(page.get_by_test_id("requests-empty")).to_have_text(
        "No requests match these filters.")

    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    assert w.problems == []
    w.context.close()


def test_a_deep_link_opens_the_request(browser, traffic) -> None:
    live, ids = traffic
    w = Watched(browser)
    page = w.page
    page.goto(f"{live.base_url}/ui#{ids['stream']}")
    drawer = page.get_by_test_id("drilldown")
    expect(drawer).to_have_attribute("data-state", "loaded")
    expect(page.get_by_test_id("dd-request-id")).to_have_text(ids["stream"])
    expect(drawer.get_by_test_id("wf-stage").filter(has_text="stream")).to_have_count(1)
    expect(drawer).to_contain_text("TTFT")
    expect(page.locator(f'tr[data-request-id="{ids["stream"]}"]')).to_have_class(
        "row ok selected")

    # the hash changes in place: the repaired answer, with its two contract checks
    page.goto(f"{live.base_url}/ui#{ids['repaired']}")
    expect(page.get_by_test_id("dd-request-id")).to_have_text(ids["repaired"])
    expect(drawer).to_have_attribute("data-state", "loaded")
    steps = drawer.get_by_test_id("contract-steps").locator("tbody tr")
    expect(steps).to_have_count(2)
    expect(steps.nth(0)).to_contain_text("invalid")
    expect(steps.nth(1)).to_contain_text("valid")
    expect(drawer.get_by_test_id("wf-contract")).to_have_count(2)
    expect(drawer.get_by_test_id("dd-overview")).to_contain_text("repaired")
    page.screenshot(path=str(ARTIFACTS / "ui-drilldown-contract.png"))

    # an id the journal does not hold: said in the drawer, not as a broken page
    page.goto(f"{live.base_url}/ui#req_000000000000000000000000")
    expect(drawer.get_by_test_id("dd-not-found")).to_be_visible()
    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    expect(page.locator("#v-requests")).to_have_text(str(len(ids)))
    assert w.problems_except("404") == []
    w.context.close()


AUTH_CONFIG = SIM_CONFIG + """
auth: {mode: required, admin_key_env: BASTION_UI_TEST_ADMIN_KEY}
"""


def test_the_page_asks_for_the_admin_key_when_auth_is_on(browser, monkeypatch) -> None:
    admin = "admin-secret-for-the-ui-test"
    monkeypatch.setenv("BASTION_UI_TEST_ADMIN_KEY", admin)
    for live in run_live(make_gateway(AUTH_CONFIG)):
        root = {"authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            assert http.get("/ui/api/summary").status_code == 401
            assert http.post("/admin/tenants", json={"name": "acme"},
                             headers=root).status_code == 201
            key = http.post("/admin/keys", json={"tenant": "acme"}, headers=root).json()["key"]
            resp = http.post("/v1/chat/completions", json={"model": "fast", "messages": MSG},
                             headers={"authorization": f"Bearer {key}"})
            assert resp.status_code == 200, resp.text
            request_id = resp.headers["x-request-id"]
            tenant = http.get(f"/ui/api/requests/{request_id}", headers=root).json()["tenant"]

        w = Watched(browser)
        page = w.page
        page.goto(f"{live.base_url}/ui#{request_id}")
        form = page.get_by_test_id("auth-form")
        expect(form).to_be_visible()
        expect(page.get_by_test_id("dashboard")).to_be_hidden()
        expect(page.get_by_test_id("error-banner")).to_be_hidden()

        page.get_by_test_id("admin-key").fill("not-the-key")
        page.get_by_test_id("auth-submit").click()
        expect(page.get_by_test_id("auth-error")).to_contain_text("invalid admin key")
        assert page.evaluate("sessionStorage.getItem('bastion.adminKey')") is None

        page.get_by_test_id("admin-key").fill(admin)
        page.get_by_test_id("auth-submit").click()
        expect(form).to_be_hidden()
        expect(page.locator("#v-requests")).to_have_text("1")
        expect(page.get_by_test_id("cost-by-tenant").locator(f'tr[data-tenant="{tenant}"]')
               ).to_be_visible()
        expect(page.get_by_test_id("request-row")).to_have_count(1)
        # the deep link waited for the key, then opened
        expect(page.get_by_test_id("drilldown")).to_have_attribute("data-state", "loaded")
        expect(page.get_by_test_id("dd-request-id")).to_have_text(request_id)
        assert page.evaluate("sessionStorage.getItem('bastion.adminKey')") == admin

        # a reload keeps the key for the tab's session
        page.reload()
        expect(page.locator("#v-requests")).to_have_text("1")
        expect(form).to_be_hidden()
        assert w.problems_except("401") == []
        w.context.close()


EVIL = '<img src=x onerror="window.__pwned=1">'


def fake_event(request_id: str) -> dict[str, Any]:
    """A journal event whose every free-text field is markup, with the parts the simulated
    traffic above does not produce: a skipped target, retrieved chunks."""
    return {
        "request_id": request_id, "ts": 1_700_000_000.5, "method": "POST",
        "path": "/v1/answer", "status": 200, "outcome": "ok", "tenant": EVIL,
        "key_id": EVIL, "route": "answer", "priority": "default", "target": EVIL,
        "fallback": True, "calls": 1, "cache": "miss", "prompt": EVIL, "contract": "valid",
        "attempts": [
            {"target": "down/model", "n": 1, "outcome": "breaker_open", "start_ms": 0.5,
             "ms": 0.0, "called": False},
            {"target": EVIL, "n": 1, "outcome": "ok", "start_ms": 0.6, "ms": 7.5,
             "called": True}],
        "contract_steps": [{"target": EVIL, "phase": "first", "valid": True, "violations": 0,
                            "start_ms": 8.2, "ms": 0.3}],
        "retrieved": [[EVIL, 0.91234], ["doc-2#c1", 0.5]],
        "prompt_tokens": 120, "completion_tokens": 30, "cost_usd": 0.0042,
        "latency_ms": 9.1, "upstream_ms": 7.5,
        "stages": [["admission", 0.1, 0.1, "ok"], ["retrieval", 0.2, 0.3, "ok"],
                   ["route", 0.5, 7.7, "ok"]],
    }


class CannedApi:
    """Answers the page's /ui/api/ fetches with canned JSON (through Playwright's request
    interception); ``failing`` turns the summary into a 500."""

    def __init__(self) -> None:
        self.failing = False
        self.event = fake_event("req_evil")
        self.summary = {
            "window_s": 300, "now": 1_700_000_030.0, "requests": 1, "truncated": False,
            "errors": 1, "error_rate": 1.0, "errors_by_class": {EVIL: 1},
            "latency_ms": {"p50": 9.1, "p95": 9.1, "p99": 9.1},
            "ttft_ms": {"p50": None, "p95": None, "p99": None}, "fallback_rate": 1.0,
            "cache": {"lookups": 1, "hits": 0, "hit_rate": 0.0}, "cost_usd": 0.0042,
            "cost_by_tenant": [{"tenant": EVIL, "requests": 1, "cost_usd": 0.0042}],
            "series": [{"minute": 1_699_999_980, "requests": 1, "errors": 1, "p95_ms": 9.1}],
            "breakers": {EVIL: "open", "down/model": "half_open"}, "config": "cafe",
        }

    def __call__(self, route: Any) -> None:
        url = route.request.url
        if "/ui/api/summary" in url and self.failing:
            route.fulfill(status=500, content_type="application/json", body=json.dumps(
                {"error": {"message": "the store exploded", "type": "internal_error",
                           "code": "internal_error"}}))
        elif "/ui/api/summary" in url:
            route.fulfill(json=self.summary)
        elif "/ui/api/requests/" in url:
            route.fulfill(json=self.event)
        else:
            route.fulfill(json={"object": "list", "data": [self.event]})


def test_untrusted_text_stays_text_and_a_failing_api_shows_a_banner(browser) -> None:
    """The real page against canned JSON: markup in tenants, targets, outcomes and breaker
    names is shown as text and never run; a 500 shows the banner with the server's message,
    and the next good answer clears it."""
    api = CannedApi()
    for live in run_live(make_gateway()):
        w = Watched(browser)
        page = w.page
        page.route(re.compile(r"/ui/api/"), api)
        page.goto(f"{live.base_url}/ui#req_evil")
        drawer = page.get_by_test_id("drilldown")
        expect(drawer).to_have_attribute("data-state", "loaded")
        expect(page.get_by_test_id("request-row")).to_have_count(1)
        expect(page.locator('[data-testid="breaker"][data-state="open"]')).to_contain_text(EVIL)
        expect(page.get_by_test_id("errors-by-class")).to_contain_text(EVIL)
        expect(page.get_by_test_id("cost-by-tenant")).to_contain_text(EVIL)
        expect(page.get_by_test_id("request-row")).to_contain_text(EVIL)
        expect(drawer.get_by_test_id("dd-overview")).to_contain_text(EVIL)
        expect(drawer.get_by_test_id("retrieved")).to_contain_text(EVIL)
        expect(drawer.get_by_test_id("retrieved")).to_contain_text("0.9123")
        skipped = drawer.locator('[data-testid="attempt"][data-called="false"]')
        expect(skipped).to_contain_text("skipped")
        expect(drawer.locator(".wf-bar.skipped")).to_have_count(1)
        assert page.locator("img").count() == 0
        assert page.evaluate("window.__pwned") is None

        api.failing = True
        page.get_by_test_id("refresh-now").click()
        banner = page.get_by_test_id("error-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("the store exploded")
        api.failing = False
        page.get_by_test_id("refresh-now").click()
        expect(banner).to_be_hidden()
        assert w.problems_except("500") == []
        w.context.close()
