"""The board's team and plugin pages: versions, validation, smoke matches, withdrawals.

Over Flask's test client and a real SQLite database (fixtures: tests/board/conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from board_data import ESCAPED, EVIL, VALIDATED, BoardRows, Played
from flask.testing import FlaskClient
from test_scoring import Rows

# --------------------------------------------------------------------------------------------------
# Teams and plugins
# --------------------------------------------------------------------------------------------------


def test_teams_list_their_plugins(client: FlaskClient, played: Played) -> None:
    data = client.get("/api/teams").json
    names = [t["name"] for t in data["teams"]]
    assert names == sorted([EVIL, "blue", "red"])
    blue = next(t for t in data["teams"] if t["name"] == "blue")
    assert [p["name"] for p in blue["plugins"]] == ["madry", "plain"]
    page = client.get(f"/teams/{blue['id']}").get_data(as_text=True)
    assert "Team blue" in page and "madry" in page and "valid" in page
    shown = client.get(f"/api/teams/{blue['id']}").json["plugins"]
    assert [{k: v for k, v in p.items() if k != "standing"} for p in shown] == blue["plugins"]


def test_plugin_page_shows_versions_commits_hashes_and_results(instructor: FlaskClient, played: Played) -> None:
    fgsm = instructor.get("/api/matrix?round=2").json["attacks"][0]["plugin_id"]
    data = instructor.get(f"/api/plugins/{fgsm}").json
    (version,) = data["versions"]
    assert version["commit"] == "0123456789abcdef" and len(version["content_hash"]) == 64
    assert version["rounds"] == [1, 2] and version["valid"] and not data["never_validated"]
    assert sorted((r["threat"], r["opponent"]["plugin"]) for r in version["results"]) == [
        ("gray-box", "madry"), ("white-box", "madry"), ("white-box", "plain"),
    ]  # fmt: skip
    page = instructor.get(f"/plugins/{fgsm}").get_data(as_text=True)
    assert version["content_hash"] in page and "0123456789abcdef" in page and "Results" in page


def test_a_plugin_that_never_validated_shows_its_errors_plainly(client: FlaskClient, rows: Rows) -> None:
    rows.version("students", "broken", "attack", valid=False, errors="SyntaxError: invalid syntax (broken.py, line 3)")
    second = rows.version("students", "broken", "attack", valid=False, errors=f"manifest: bad name {EVIL}\nline two")
    plugin_id = client.get("/api/teams").json["teams"][0]["plugins"][0]["id"]
    page = client.get(f"/plugins/{plugin_id}").get_data(as_text=True)
    assert "never passed validation" in page and "SyntaxError: invalid syntax (broken.py, line 3)" in page
    assert f"manifest: bad name {ESCAPED}\nline two" in page and EVIL not in page
    data = client.get(f"/api/plugins/{plugin_id}").json
    assert data["never_validated"] and data["versions"][0]["id"] == second
    assert data["versions"][0]["errors"] == [f"manifest: bad name {EVIL}", "line two"]
    assert "never passed validation" in client.get("/teams").get_data(as_text=True)


def test_a_defenses_failed_training_is_shown_on_its_page(instructor: FlaskClient, played: Played) -> None:
    plain = instructor.get("/api/matrix?round=2").json["defenses"][1]["plugin_id"]
    (version,) = instructor.get(f"/api/plugins/{plain}").json["versions"]
    (failure,) = version["training_failures"]
    assert (failure["kind"], failure["error"]) == ("train-defense", "<i>out of memory</i>")
    assert "Training failed" in instructor.get(f"/plugins/{plain}").get_data(as_text=True)


DEFERRED = (
    "daily limit reached: team cyan may have 3 versions evaluated per 24 hours; "
    "this one is evaluated by the first sync after 2025-01-03 09:30 UTC"
)
ARENA_FAULT = "the arena could not evaluate this version (not counted; tried again next sync): bwrap: no permission"
SMOKE_OK = {
    "declared": {"norms": ["linf", "l2"], "threats": ["white-box"], "targeted": False, "randomized": False},
    "smoke": {
        "against": "arena/undefended", "threat": "white-box", "norm": "linf", "eps": 0.2, "samples": 16,
        "status": "ok", "seconds": 1.5,
        "metrics": {"clean_accuracy": 0.9375, "robust_accuracy": 0.125, "success_rate": 0.8667, "violations": 0,
                    "queries": None},
    },
}  # fmt: skip
SMOKE_FAILED = {
    "declared": {"randomized": False},
    "smoke": {
        "against": "arena/fgsm", "threat": "white-box", "norm": "linf", "eps": 0.2, "samples": 16,
        "status": "failed", "seconds": 0.4, "error": "against arena/fgsm (white-box): ZeroDivisionError",
    },
}  # fmt: skip


def plugin_ids(client: FlaskClient) -> dict[str, int]:
    """Every plugin's id by ``team/plugin``."""
    return {f"{t['name']}/{p['name']}": p["id"] for t in client.get("/api/teams").json["teams"] for p in t["plugins"]}


def text(client: FlaskClient, url: str) -> str:
    """A page with its whitespace collapsed and its apostrophes as written, as a reader sees it."""
    return " ".join(client.get(url).get_data(as_text=True).replace("&#39;", "'").split())


@pytest.mark.parametrize(
    ("status", "errors", "flag", "explained"),
    [
        ("pending", None, "pending", "recorded, not validated yet: the next sync validates it"),
        ("deferred", DEFERRED, "deferred", "over the team's daily validation limit: not validated yet"),
        ("error", ARENA_FAULT, "arena error", "the arena could not validate it (the arena's fault, not the plugin's"),
    ],
)
def test_a_version_waiting_for_validation_says_why_and_is_not_called_invalid(
    client: FlaskClient, rows: BoardRows, status: str, errors: str | None, flag: str, explained: str
) -> None:
    rows.version("cyan", "waiting", "attack", status=status, errors=errors, checks={"folder": []})
    plugin_id = plugin_ids(client)["cyan/waiting"]
    page = text(client, f"/plugins/{plugin_id}")
    assert f'<span class="flag flag-{status}">{flag}</span>' in page and explained in page
    assert "invalid" not in page and "never passed validation" not in page and "Validation errors" not in page
    assert "has been validated yet, so it plays in no round yet: 1 version waits for validation." in page
    assert (
        'validation ran</th><td><span class="muted">not yet' in page
        and "reading the folder</th><td> found no problem" in page
    )
    if errors:
        assert f'<span class="note">{errors}</span>' in page  # the arena's own reason, with the limit and the time
    data = client.get(f"/api/plugins/{plugin_id}").json
    assert (data["never_validated"], data["waiting"], data["failed"]) == (True, 1, 0)
    (version,) = data["versions"]
    assert (version["status"], version["errors"], version["note"]) == (status, [], [errors] if errors else [])
    assert (
        version["evaluated_at"] is None and version["checks"] == {"folder": []} and explained in version["explanation"]
    )
    team = text(client, "/teams")
    assert f'<span class="flag flag-{status}">{flag}</span>' in team and explained in team
    assert "no version has passed validation yet" in team and "never passed validation" not in team


def test_a_valid_version_shows_its_smoke_match_readably_with_every_field(
    instructor: FlaskClient, rows: BoardRows
) -> None:
    client = instructor
    checks = SMOKE_OK | {"smoke": SMOKE_OK["smoke"] | {"draws": 2}, "imports": ["torch"]}
    rows.version("cyan", "pgd", "attack", checks=checks, log_tail="step 1\nstep 2")
    plugin_id = plugin_ids(client)["cyan/pgd"]
    page = text(client, f"/plugins/{plugin_id}")
    assert (
        '<span class="flag flag-valid">valid</span>' in page
        and "validation ran</th><td>2025-01-02 09:30:00 UTC" in page
    )
    assert "norms: linf, l2 · randomized: False · targeted: False · threats: white-box" in page
    assert (
        '<span class="flag flag-valid">ok</span> against <code>arena/undefended</code> · white-box · linf eps 0.2 · '
        "16 samples · 1.5 s <br>clean accuracy 93.8% · robust accuracy 12.5% · attack success 86.7% · "
        "violations 0 · queries –"
    ) in page
    assert "draws: <code>2</code>" in page and 'imports</th><td><code>["torch"]</code>' in page  # kept as recorded
    assert "{&#39;" not in page and "never" not in page  # no dict dumped raw; no notice
    assert (
        '<summary>Validation log tail (what the plugin printed)</summary><pre class="log">step 1 step 2</pre>' in page
    )
    (version,) = client.get(f"/api/plugins/{plugin_id}").json["versions"]
    assert version["checks"] == checks and version["log_tail"] == "step 1\nstep 2"
    assert (version["status"], version["evaluated_at"], version["explanation"]) == (
        "valid",
        VALIDATED.isoformat(),
        None,
    )
    (line,) = client.get("/api/teams").json["teams"][0]["plugins"]
    assert line["latest"]["status"] == "valid" and line["latest"]["evaluated_at"] == VALIDATED.isoformat()


def test_a_failed_validation_shows_the_failed_smoke_match_and_its_errors(
    instructor: FlaskClient, rows: BoardRows
) -> None:
    client = instructor
    error = "smoke match: against arena/fgsm (white-box): ZeroDivisionError"
    rows.version("cyan", "shaky", "defense", status="invalid", errors=error, checks=SMOKE_FAILED, log_tail="Trace")
    rows.version("cyan", "shaky", "defense", status="deferred", errors=DEFERRED)
    plugin_id = plugin_ids(client)["cyan/shaky"]
    page = text(client, f"/plugins/{plugin_id}")
    assert '<span class="flag flag-invalid">invalid</span>' in page and "Validation errors" in page and error in page
    assert '<span class="flag flag-invalid">failed</span> against <code>arena/fgsm</code>' in page
    assert "ZeroDivisionError</pre>" in page and "randomized: False" in page
    assert "1 version waits for validation, and 1 failed it." in page
    data = client.get(f"/api/plugins/{plugin_id}").json
    assert (data["never_validated"], data["waiting"], data["failed"]) == (True, 1, 1)
    deferred, invalid = data["versions"]
    assert (deferred["status"], deferred["note"], invalid["errors"]) == ("deferred", [DEFERRED], [error])
    assert invalid["checks"] == SMOKE_FAILED and invalid["log_tail"] == "Trace"
    (line,) = client.get("/api/teams").json["teams"][0]["plugins"]
    assert (line["valid_versions"], line["latest"]["status"], line["latest"]["note"]) == (0, "deferred", [DEFERRED])


def test_the_team_page_shows_the_newest_versions_status_beside_an_older_valid_one(
    client: FlaskClient, rows: BoardRows
) -> None:
    rows.version("cyan", "pgd", "attack", checks=SMOKE_OK)
    rows.version("cyan", "pgd", "attack", status="error", errors=ARENA_FAULT)
    rows.version("cyan", "fgsm", "attack", status="invalid", errors="SyntaxError")
    team_id = client.get("/api/teams").json["teams"][0]["id"]
    page = text(client, f"/teams/{team_id}")
    assert '<span class="flag flag-error">arena error</span>' in page and ARENA_FAULT in page
    assert "an older valid version stays in the game" in page
    assert '<span class="flag flag-invalid">invalid</span>' in page and "never passed validation" in page
    fgsm, pgd = client.get(f"/api/teams/{team_id}").json["plugins"]
    assert (pgd["valid_versions"], pgd["latest"]["status"], pgd["latest"]["errors"]) == (1, "error", [])
    assert (fgsm["latest"]["status"], fgsm["latest"]["errors"], fgsm["latest"]["note"]) == (
        "invalid",
        ["SyntaxError"],
        [],
    )


def test_a_withdrawn_plugin_says_so(client: FlaskClient, rows: BoardRows) -> None:
    version = rows.version("cyan", "gone", "defense", checks=SMOKE_OK)
    rows.withdraw(version, datetime(2025, 1, 5, 8, 0, tzinfo=UTC))
    plugin_id = plugin_ids(client)["cyan/gone"]
    said = (
        'withdrawn</span> <span class="explanation">'
        "its folder left the team's repository (seen by the sync of 2025-01-05 08:00:00 UTC)"
    )
    for url in (f"/plugins/{plugin_id}", "/teams"):
        page = text(client, url)
        assert said in page and "stays in the game" not in page, url
    assert client.get(f"/api/plugins/{plugin_id}").json["plugin"]["withdrawn_at"] == "2025-01-05T08:00:00+00:00"
    (line,) = client.get("/api/teams").json["teams"][0]["plugins"]
    assert line["withdrawn_at"] == "2025-01-05T08:00:00+00:00"


def test_a_hostile_log_tail_and_checks_are_escaped(instructor: FlaskClient, rows: BoardRows) -> None:
    client = instructor
    hostile = {
        "declared": {"norms": [EVIL], "threats": ["white-box"]},
        "folder": [f"plugin.toml: {EVIL}"],
        "smoke": SMOKE_FAILED["smoke"] | {"error": f"died {EVIL}", "against": EVIL, "extra": EVIL},
        EVIL: EVIL,
    }
    rows.version("cyan", "evil", "attack", status="invalid", errors=EVIL, checks=hostile, log_tail=f"</pre>{EVIL}")
    rows.version("cyan", "evil", "attack", status="deferred", errors=f"limit {EVIL}")
    plugin_id = plugin_ids(client)["cyan/evil"]
    for url in (f"/plugins/{plugin_id}", "/teams"):
        page = client.get(url).get_data(as_text=True)
        assert "<script" not in page and "</pre><script" not in page, url
    page = client.get(f"/plugins/{plugin_id}").get_data(as_text=True)
    assert f'<pre class="log">&lt;/pre&gt;{ESCAPED}</pre>' in page
    assert f"norms: {ESCAPED}" in page and f"died {ESCAPED}" in page and f"limit {ESCAPED}" in page
    assert "\\u003cscript\\u003e" in page  # unknown fields, as JSON that cannot close a tag
    assert f"limit {ESCAPED}" in client.get("/teams").get_data(as_text=True)
    (_, invalid) = client.get(f"/api/plugins/{plugin_id}").json["versions"]
    assert invalid["log_tail"] == f"</pre>{EVIL}" and invalid["checks"] == hostile
