"""`arena results` shows every flag the board's overview shows, in the board's words (issue 25): one round with a
defense below the floor, a randomized one, one that masks its gradients, one whose own code failed, a disputed match,
and an attack the referee had to project, read by the board (Flask's test client) and by the command line."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner
from test_scoring import Rows

from arena.commands.cli import main
from arena.store import Database
from leaderboard import create_app


class Flags(HTMLParser):
    """The overview's ranking rows: each row's ``team/plugin`` and the texts of its flags."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, set[str]] = {}
        self._cells: list[str] | None = None
        self._cell = self._flag = ""
        self._flags: set[str] = set()
        self._in_flag = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._cells, self._flags = [], set()
        elif tag == "td":
            self._cell = ""
        elif tag in ("span", "a") and "flag" in (dict(attrs).get("class") or "").split():
            self._in_flag, self._flag = True, ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("span", "a") and self._in_flag:
            self._in_flag = False
            self._flags.add(" ".join(self._flag.split()))
        elif tag == "td" and self._cells is not None:
            self._cells.append(" ".join(self._cell.split()))
        elif tag == "tr" and self._cells is not None:
            label = next((found for c in self._cells if (found := re.match(r"(\S+) / (\S+)", c))), None)
            if label:
                self.rows[f"{label[1]}/{label[2]}"] = self._flags
            self._cells = None

    def handle_data(self, data: str) -> None:
        self._cell += data
        if self._in_flag:
            self._flag += data


def board_words(flag: str) -> str:
    """A board flag as the command line words it: without the warning sign, "(2 its own)" spelled out."""
    own = re.fullmatch(r"\((\d+) its own\)", flag)
    return f"{own[1]} failed by its own code" if own else flag.removeprefix("⚠ ")


def test_results_show_every_flag_the_board_shows(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    db = Database(url)
    db.upgrade()
    rows = Rows(db)
    rows.track("digits", clean_floor=0.8, norm="linf", eps=0.2, eval_size=4)
    fgsm, sloppy = rows.version("arena", "fgsm", "attack"), rows.version("red", "sloppy", "attack")
    baseline, distilled = (
        rows.version("arena", "undefended", "defense"),
        rows.version("arena", "distillation", "defense"),
    )
    weak, drawn = rows.version("blue", "weak", "defense"), rows.version("blue", "drawn", "defense")
    round_id = rows.round(1, status="done", published=True)
    rows.match(round_id, fgsm, baseline, [0, 0, 0, 1], metrics={"input_gradient": 1.0})
    rows.match(round_id, fgsm, distilled, [1, 1, 1, 0], metrics={"input_gradient": 1e-6})
    rows.match(round_id, fgsm, weak, [0, 0, 0, 0], clean=[0, 0, 1, 1])  # clean 50 %: under the floor of 80 %
    rows.match(round_id, fgsm, drawn, [1, 0, 1, 0], metrics={"draws": 3})
    rows.match(round_id, sloppy, baseline, [0, 0, 1, 1], metrics={"violations": 2})
    rows.match(round_id, sloppy, weak, status="failed", error="the defense failed", metrics={"blame": "defense"})
    rows.match(round_id, sloppy, drawn, status="failed", error="disputed", metrics={"blame": "disputed"})
    db.dispose()

    app = create_app({"DATABASE_URL": url, "ARENA_HOME": str(tmp_path / "home"), "STANDINGS_REFRESH": 0})
    parser = Flags()
    parser.feed(app.test_client().get("/").get_data(as_text=True))
    app.extensions["arena_db"].dispose()
    board = {label: {board_words(f) for f in flags} for label, flags in parser.rows.items()}
    assert board["arena/distillation"] == {"vanishing gradients"}
    assert board["blue/weak"] == {"below floor", "1 failed by its own code"}
    assert board["blue/drawn"] == {"3 draws", "1 disputed"} and board["red/sloppy"] == {"2 projected", "1 disputed"}

    monkeypatch.setenv("ARENA_DATABASE_URL", url)
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(main, ["results"])
    assert out.exit_code == 0, out.output
    cli: dict[str, set[str]] = {}
    for line in out.output.splitlines():
        found = re.match(r"  (\S+/\S+)(?: +[-\d.]+){3} *(.*)$", line)
        if found:
            cli[found[1]] = {flag for flag in found[2].split(", ") if flag}
    for label in ("arena/fgsm", "arena/undefended", "blue/weak"):
        assert board.get(label, set()) == cli[label], label
    assert {label: flags for label, flags in cli.items() if flags} == {k: v for k, v in board.items() if v}
