"""The board in a real browser: headless Debian Chromium over a finished digits round, served on 127.0.0.1.

The round is played by the arena's own functions on a tiny digits track with a few built-in plugins and
one attack that always fails. Screenshots land in ``test-artifacts/browser/``. Where Chromium or its
driver is missing the tests skip, except in CI (``CI=true``), where they fail: ``.ci/run`` installs
Debian's ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_rounds import RAISES_IN_RUN, TINY, write_plugin
from werkzeug.serving import make_server

from arena.config import Settings
from arena.execution import local
from arena.plan import planner, versions
from arena.results import access
from arena.rules.tracks import load_tracks
from arena.store import Database, Round, Team
from leaderboard import create_app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
BUILTINS = [("attacks", "fgsm"), ("attacks", "transfer"), ("defenses", "undefended"), ("defenses", "fgsm-adv-training")]
BROKEN_AT_IMPORT = "from arena import Attack\nclass Broken(Attack)\n"


@pytest.fixture(scope="module")
def finished_round(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A finished round on the tiny digits track: two built-in attacks, one failing attack, two defenses."""
    root = tmp_path_factory.mktemp("browser-arena")
    home, plugin_dir = root / "home", root / "plugins"
    home.mkdir()
    (home / "tracks.toml").write_text(TINY)
    for kind, name in BUILTINS:
        shutil.copytree(REPO / "plugins" / kind / name, plugin_dir / kind / name)
    write_plugin(plugin_dir, "always-raises", "attack", RAISES_IN_RUN)
    write_plugin(plugin_dir, "never-imports", "attack", BROKEN_AT_IMPORT)
    settings = Settings(home, f"sqlite:///{home / 'arena.db'}", home / "data", (plugin_dir,), None)
    db = Database(settings.database_url)
    db.upgrade()
    tracks = load_tracks(home)
    versions.record_plugins(db, settings)
    round_id = planner.open_round(db, [tracks["tiny"]])
    planner.plan_round(db, settings, round_id, tracks)
    local.run_local(db, settings, tracks, round_id, progress=False)
    planner.publish_round(db, round_id)  # the instructor publishes: the public sees its scores
    db.dispose()
    return settings


@pytest.fixture(scope="module")
def board(finished_round: Settings) -> Iterator[str]:
    """The board over the finished round, served by a real WSGI server on a free port of 127.0.0.1."""
    config = {"DATABASE_URL": finished_round.database_url, "ARENA_HOME": str(finished_round.home)}
    app = create_app(config | {"STANDINGS_REFRESH": 0})  # every view checks the data (a test opens a round)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
    app.extensions["arena_db"].dispose()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Headless Chromium driven through chromedriver, with a fresh profile and no network of its own."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        message = f"missing {', '.join(missing)}: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def screenshot(driver: object, name: str) -> Path:
    """Save the whole page (not only the window) as ``test-artifacts/browser/NAME.png``."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 120, 600), 6000))
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    driver.set_window_size(1400, 1000)
    return path


def text(driver: object) -> str:
    return driver.find_element("tag name", "body").text


def until(driver: object, condition: Callable[[object], Any]) -> Any:
    """``condition(driver)`` once it holds, within 10 s; an element replaced while it is read is read again."""
    from selenium.common.exceptions import WebDriverException  # imported where the fixture found selenium
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(condition)


def href(driver: object, by: str, value: str) -> str:
    """The ``href`` of the element found ``by`` ``value`` (read again if the page replaced it meanwhile)."""
    return until(driver, lambda d: d.find_element(by, value).get_attribute("href"))


def test_overview_shows_both_rankings_of_every_board(browser: object, board: str) -> None:
    browser.get(board + "/")
    assert browser.title == "Overview · Arena"
    page = text(browser)
    for threat in ("white-box", "gray-box", "black-box"):
        assert f"tiny · {threat}" in page
    assert "Round: 1" in page and "done" in page and "still running" not in page
    assert "arena / undefended" in page and "arena / fgsm-adv-training" in page
    assert "students / always-raises" in page
    first = browser.find_element("css selector", "table.defenses tbody tr td.score")
    assert re.fullmatch(r"\d+\.\d%", first.text)  # a worst-case robust accuracy, as a person reads it
    assert screenshot(browser, "overview").stat().st_size > 10_000


def test_matrix_is_a_coloured_heatmap_whose_cells_open_their_match(browser: object, board: str) -> None:
    browser.get(board + "/matrix?track=tiny&threat=white-box")
    cells = browser.find_elements("css selector", "table.matrix td")
    played = [c for c in cells if re.fullmatch(r"\d+\.\d%", c.text)]
    failed = [c for c in cells if c.text == "failed"]
    assert len(played) == 2 and len(failed) == 2  # fgsm and always-raises against two defenses
    colours = {c.value_of_css_property("background-color") for c in played}
    assert all(c.startswith("rgb") and c not in ("rgba(0, 0, 0, 0)", "rgb(229, 231, 235)") for c in colours)
    assert browser.find_element("css selector", ".legend .scale").is_displayed()
    screenshot(browser, "matrix")
    played[0].find_element("tag name", "a").click()
    assert browser.title.startswith("Match ")
    assert "attack arena / fgsm" in text(browser)


def test_match_page_shows_the_gallery_a_person_can_see(browser: object, board: str) -> None:
    browser.get(board + "/matrix?track=tiny&threat=white-box")
    link = browser.find_element("css selector", "table.matrix td a[href^='/matches/']")
    browser.get(link.get_attribute("href"))
    page = text(browser)
    assert "Robust accuracy" in page and "Attack success" in page and "Per-sample outcomes" in page
    images = browser.find_elements("css selector", ".gallery img")
    assert len(images) == 3 * 8  # clean, adversarial and perturbation of 8 samples
    for image in images:
        loaded = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
        assert loaded == 112, image.get_attribute("src")
    captions = browser.find_elements("css selector", ".gallery figcaption")
    assert len(captions) == 8
    assert all(re.search(r"label \d\s+clean → \d · adversarial → \d", c.text) for c in captions), captions[0].text
    screenshot(browser, "match")


def test_a_failed_match_shows_its_reason_and_log(browser: object, board: str) -> None:
    browser.get(board + "/matrix?track=tiny&threat=white-box")
    failed = browser.find_element("css selector", "table.matrix td.failed a")
    failed.click()
    page = text(browser)
    assert "Why it failed" in page and "RuntimeError: this attack always fails" in page
    screenshot(browser, "failed-match")


def test_history_draws_charts_with_the_vendored_library(browser: object, board: str) -> None:
    browser.get(board + "/rounds?track=tiny&threat=white-box")
    datasets = browser.execute_script(
        "return ['defense-chart', 'attack-chart'].map("
        "id => Chart.getChart(document.getElementById(id)).data.datasets.map(d => d.label))"
    )
    assert sorted(datasets[0]) == ["arena/fgsm-adv-training", "arena/undefended"]
    assert "arena/fgsm" in datasets[1]
    assert "How long each defense survived" in text(browser)
    screenshot(browser, "rounds")


def test_plugin_page_shows_a_validation_error_plainly(browser: object, board: str) -> None:
    browser.get(board + "/teams")
    browser.find_element("link text", "never-imports").click()
    page = text(browser)
    assert "never passed validation" in page and "SyntaxError" in page
    screenshot(browser, "plugin-invalid")
    browser.get(board + "/jobs")
    assert "Recently done" in text(browser)
    screenshot(browser, "jobs")
    browser.get(board + "/rules")
    assert "tiny" in text(browser) and "gray-box" in text(browser)
    screenshot(browser, "rules")


def test_a_match_log_is_its_teams_and_signing_in_shows_it(
    browser: object, board: str, finished_round: Settings
) -> None:
    browser.get(board + "/matrix?track=tiny&threat=white-box")
    match = href(browser, "css selector", "table.matrix td.failed a")
    browser.get(match)
    assert "shown to the plugin's team and the instructor" in text(browser) and "Traceback" not in text(browser)
    db = Database(finished_round.database_url)
    with db.session() as session:
        token = access.issue(session, session.scalar(select(Team.id).where(Team.name == "students")))
    db.dispose()
    try:
        browser.get(board + "/signin")
        browser.find_element("name", "token").send_keys(token)
        browser.find_element("css selector", "form button").click()
        until(browser, lambda driver: "signed in as" in text(driver))  # the redirect
        assert "signed in as students" in text(browser)
        browser.get(match)
        page = text(browser)
        assert "Traceback" in page and "this attack always fails" in page and "plugin-cache" not in page
        screenshot(browser, "signed-in-match")
    finally:
        browser.get(board + "/signout")
    assert "Sign in" in text(browser)


def test_the_open_round_sits_above_the_published_results_which_export_as_csv(
    browser: object, board: str, finished_round: Settings
) -> None:
    db = Database(finished_round.database_url)
    tracks = load_tracks(finished_round.home)
    round_id = planner.open_round(db, [tracks["tiny"]], closes_at=datetime.now(UTC) + timedelta(hours=5))
    try:
        browser.get(board + "/")
        page = text(browser)
        assert "Round 2 · open" in page and re.search(r"\((4 h 59|5 h 0) min left\)", page)
        assert "Validated so far" in page and "students" in page and "always-raises" in page
        assert "Round 1: the latest published results" in page and "tiny · white-box" in page
        assert page.index("Round 2 · open") < page.index("Round 1: the latest published results")  # on top
        screenshot(browser, "open-round")
        link = href(browser, "link text", "rankings")
        with urllib.request.urlopen(link, timeout=10) as response:  # a stranger's download: no cookie
            assert response.headers["Content-Type"].startswith("text/csv")
            ranked = list(csv.DictReader(io.StringIO(response.read().decode())))
        assert {r["round"] for r in ranked} == {"1"} and {"undefended", "fgsm"} <= {r["plugin"] for r in ranked}
    finally:
        with db.session() as session:
            session.delete(session.get(Round, round_id))
        db.dispose()


def test_the_round_switcher_keeps_each_number_apart(browser: object, board: str, finished_round: Settings) -> None:
    """A newer round, played and not yet published: the public's overview shows round 1 and offers round 2 beside
    it, as two numbers (the template once glued them into "Round: 21")."""
    db = Database(finished_round.database_url)
    round_id = planner.open_round(db, [load_tracks(finished_round.home)["tiny"]])
    with db.session() as session:
        session.get(Round, round_id).status = "done"
    try:
        browser.get(board + "/")
        switcher = browser.find_element("css selector", "p.rounds")
        assert re.match(r"Round: 2 · 1\b", switcher.text), switcher.text
        assert [a.text for a in switcher.find_elements("tag name", "a")] == ["2"]
        assert switcher.find_element("tag name", "strong").text == "1"
        screenshot(browser, "round-switcher")
    finally:
        with db.session() as session:
            session.delete(session.get(Round, round_id))
        db.dispose()


def test_lessons_page_puts_each_claim_beside_the_rounds_figure(browser: object, board: str) -> None:
    browser.get(board)
    browser.get(href(browser, "link text", "Lessons"))
    until(browser, lambda d: "The lecture replayed on tiny" in text(d))
    claim = browser.find_element("id", "fgsm-undefended")
    assert "FGSM fools an undefended network" in claim.text and "Goodfellow, Shlens and Szegedy" in claim.text
    verdict = claim.find_element("css selector", ".flag").text
    assert verdict in ("reproduced", "not reproduced"), "the round played FGSM against the undefended model"
    assert "%" in claim.find_element("css selector", "table.figures").text
    missing = browser.find_element("id", "distillation")
    assert "not played" in missing.text and "the round has no robust accuracy of distillation" in missing.text
    screenshot(browser, "lessons")
