"""What the command line prints: a round's rankings with every flag the board shows, what a run will cost, and one
plugin's matches (``arena plugin check``, ``arena play``). Plain text lines; the commands colour and echo them."""

from __future__ import annotations

from arena.commands.checks import Match, worst_case
from arena.commands.costs import Cost
from arena.results.boards import AttackStanding, Board, DefenseStanding

#: how many of a log's last lines a match shows
LOG_LINES = 6


def defense_flags(d: DefenseStanding) -> list[str]:
    """The flags the board's overview shows beside a defense, in its words."""
    flags = ["below floor"] if d.below_floor else []
    flags += [f"{d.draws} draws"] if d.draws and d.draws > 1 else []
    flags += [g["name"].replace("-", " ") for g in d.diagnostics]
    flags += [f"{d.forfeited} failed by its own code"] if d.forfeited else []
    flags += [f"{d.disputed} disputed"] if d.disputed else []
    return flags


def attack_flags(a: AttackStanding) -> list[str]:
    """The flags the board's overview shows beside an attack."""
    flags = [f"{a.violations} projected"] if a.violations else []
    return flags + ([f"{a.disputed} disputed"] if a.disputed else [])


def rankings(boards: list[Board], number: int) -> list[str]:
    """Both rankings of every board of round ``number``, one line per plugin, with its flags."""
    lines = []
    for board in boards:
        lines += ["", f"round {number} - {board.track} - {board.threat}"]
        lines.append(f"  {'defense':<34} {'clean':>6} {'worst':>6} {'mean':>6}  flags")
        for d in board.defenses:
            lines.append(
                f"  {d.entry.label:<34} {_pct(d.clean_accuracy):>6} {_pct(d.worst_case_robust_accuracy):>6} "
                f"{_pct(d.mean_robust_accuracy):>6}  {', '.join(defense_flags(d))}".rstrip()
            )
        lines.append(f"  {'attack':<34} {'success':>7} {'unique':>6} {'failed':>6}  flags")
        for a in board.attacks:
            lines.append(
                f"  {a.entry.label:<34} {_pct(a.mean_success_rate):>7} {a.unique_breaks:>6} {a.failed:>6}  "
                f"{', '.join(attack_flags(a))}".rstrip()
            )
    return lines


def cost_lines(cost: Cost) -> list[str]:
    """What will be trained and played, with the estimate."""
    if not cost.trainings and not cost.matches:
        return ["nothing to train or play: every result is known already"]
    lines = []
    for t in cost.trainings:
        took = f"{_duration(t.seconds)} ({t.basis})" if t.seconds is not None else "time unknown"
        lines.append(f"  train the {t.kind} {t.label} on {t.track}: {took}")
    took = f": {_duration(cost.match_seconds)}" if cost.match_seconds is not None else ": time unknown"
    lines.append(f"  play {cost.matches} match{'es' if cost.matches != 1 else ''}{took if cost.matches else ''}")
    total = _duration(cost.seconds) if cost.seconds is not None else "time unknown until it has run once"
    return [f"to do: {len(cost.trainings)} training(s), {cost.matches} match(es); in all {total}", *lines]


def attack_table(matches: list[Match]) -> list[str]:
    """An attack's matches: success rate, mean perturbation, queries, violations, status, its log lines."""
    header = f"{'defense':<30} {'threat':<10} {'success':>7} {'L-inf':>6} {'L2':>6} {'L0':>5} {'queries':>8}"
    lines = [f"{header} {'projected':>9}  status"]
    for m in matches:
        x = m.metrics
        if m.status == "ok":
            figures = (
                f"{_pct(x.get('success_rate')):>7} {_num(x.get('mean_linf')):>6} {_num(x.get('mean_l2')):>6} "
                f"{_num(x.get('mean_l0'), 0):>5} {_num(x.get('queries_per_sample'), 0):>8} "
                f"{str(x.get('violations', 0)) + '/' + str(x.get('n', '?')):>9}"
            )
        else:
            figures = f"{'-':>7} {'-':>6} {'-':>6} {'-':>5} {'-':>8} {'-':>9}"
        lines.append(f"{m.defense:<30} {m.threat:<10} {figures}  {_status(m)}")
        lines += _log(m.log_tail)
    rates = [m.metrics["success_rate"] for m in matches if m.status == "ok"]
    rates += [0.0 for m in matches if m.status == "failed" and m.metrics.get("blame") == "disputed"]  # as ranked
    if rates:
        lines.append(f"mean success rate: {_pct(sum(rates) / len(rates))} % over {len(rates)} match(es)")
    return lines


def defense_table(matches: list[Match], logs: list[tuple[str, str, str]]) -> list[str]:
    """A defense's matches: clean and robust accuracy, rejections, status; the worst case per threat; its logs."""
    header = f"{'attack':<30} {'threat':<10} {'clean':>6} {'robust':>6} {'rejected clean':>14} {'rejected adv':>12}"
    lines = [f"{header}  status"]
    for m in matches:
        if m.status == "ok":
            n = m.metrics.get("n", "?")
            rejected = f"{m.rejected_clean}/{n}", f"{m.rejected_adversarial}/{n}"
            figures = f"{_pct(m.metrics.get('clean_accuracy')):>6} {_pct(m.metrics.get('robust_accuracy')):>6} "
            figures += f"{rejected[0]:>14} {rejected[1]:>12}"
        else:
            figures = f"{'-':>6} {'-':>6} {'-':>14} {'-':>12}"
        lines.append(f"{m.attack:<30} {m.threat:<10} {figures}  {_status(m)}")
        if m.forfeited:
            lines += _log(m.log_tail)
    worst = worst_case(matches)
    if worst:
        shown = ", ".join(f"{threat} {_pct(value)} %" for threat, value in sorted(worst.items()))
        lines.append(f"worst case (a sample counts if it survives every attack): {shown}")
    for kind, track, log in logs:
        lines.append(f"what it printed while training ({kind}, {track}):")
        lines += _log(log)
    return lines


def _status(m: Match) -> str:
    return "ok" if m.status == "ok" else f"{m.status}: {m.error}"


def _log(text: str) -> list[str]:
    tail = [line for line in text.splitlines() if line.strip()][-LOG_LINES:]
    return [f"    | {line}" for line in tail]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    return f"about {seconds:.0f} s" if seconds < 120 else f"about {seconds / 60:.0f} min"
