"""The board while a round plays, in a real browser (headless Chromium, as tests/test_browser.py): the demo's way
(the round published as soon as it is planned), a cell of the matrix appears as its match ends."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import browser, screenshot, text  # noqa: F401 (browser: the fixture)
from test_rounds import TINY, write_plugin
from werkzeug.serving import make_server

from arena.config import Settings
from arena.execution import local
from arena.plan import planner, versions
from arena.rules.tracks import load_tracks
from arena.store import Database
from leaderboard import create_app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: an attack slow enough that the round is still running when the other attack's cells appear
SLOW_ATTACK = """
import time

from arena import Attack, hookimpl

class Slow(Attack):
    def run(self, target, x, y, budget):
        time.sleep(6)
        return x

@hookimpl
def arena_attacks():
    return [Slow]
"""


@pytest.fixture
def playing(tmp_path: Path) -> Iterator[tuple[str, threading.Thread]]:
    """A round of fgsm and a slow attack against the undefended model, published while it runs (as the demo
    does), played on two workers in a thread; the board over it; yields the board's address and the thread."""
    home, plugins = tmp_path / "home", tmp_path / "plugins"
    home.mkdir()
    (home / "tracks.toml").write_text(TINY)
    for kind, name in (("attacks", "fgsm"), ("defenses", "undefended")):
        shutil.copytree(REPO / "plugins" / kind / name, plugins / kind / name)
    write_plugin(plugins, "slow", "attack", SLOW_ATTACK)
    settings = Settings(home, f"sqlite:///{home / 'arena.db'}", home / "data", (plugins,), None)
    db = Database(settings.database_url)
    db.upgrade()
    tracks = load_tracks(home)
    versions.record_plugins(db, settings)
    round_id = planner.open_round(db, [tracks["tiny"]])
    planner.plan_round(db, settings, round_id, tracks)
    planner.publish_round(db, round_id, while_running=True)
    app = create_app({"DATABASE_URL": settings.database_url, "ARENA_HOME": str(home), "STANDINGS_REFRESH": 0})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    round_ = threading.Thread(target=local.run_local, args=(db, settings, tracks, round_id, False, 2), daemon=True)
    round_.start()
    yield f"http://127.0.0.1:{server.server_port}", round_
    round_.join(timeout=300)
    server.shutdown()
    app.extensions["arena_db"].dispose()
    db.dispose()


def test_a_cell_appears_on_the_matrix_while_the_round_plays(browser: object, playing: tuple) -> None:  # noqa: F811
    board, round_ = playing
    page = board + "/matrix?track=tiny&threat=white-box"
    browser.get(page)
    assert "still running" in text(browser) and browser.find_elements("css selector", "td.pending")
    assert browser.find_element("css selector", "meta[http-equiv=refresh]").get_attribute("content") == "5"
    deadline = time.monotonic() + 240
    while not browser.find_elements("css selector", "table td a[href*='/matches/']"):
        assert round_.is_alive(), "the round ended before the board showed a cell of it"
        assert time.monotonic() < deadline, "no cell appeared"
        time.sleep(0.5)
        browser.get(page)
    pending = browser.find_elements("css selector", "td.pending")
    assert "still running" in text(browser) and pending, "a cell appeared while others were still being played"
    assert re.search(r"about \d+ min left", text(browser)), "the time left, estimated from the matches played"
    screenshot(browser, "matrix-while-playing")
    browser.get(board + "/jobs")
    assert "reloads every 5 seconds" in text(browser)
    round_.join(timeout=240)
    browser.get(page)
    if "still running" in text(browser):  # the board's standings may lag by their refresh time
        time.sleep(6)
        browser.get(page)
    assert "still running" not in text(browser) and not browser.find_elements("css selector", "td.pending")
