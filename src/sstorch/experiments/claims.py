"""The manifest's claims, checked against the measured means (markdown bullets).

Three kinds, all on one ``metric`` (default ``autoattack_acc``), in points of accuracy:

- ``within``: ``method`` is at most ``points`` below ``reference``,
  ``mean(method) - mean(reference) ≥ -points`` (the paper's "< 1.5 % loss");
- ``beats``: ``method`` is above every one of ``others``;
- ``ablation``: each of ``others`` relative to ``reference`` (the no-constraint variant).

A difference smaller than the larger seed-to-seed standard deviation of the two rows is
flagged, and rows run on different seeds are also compared on the seeds they share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sstorch.experiments.stats import fmean

CLAIMS_BEGIN, CLAIMS_END = "<!-- sweep:claims -->", "<!-- /sweep:claims -->"
METRIC_LABELS = {"autoattack_acc": "AutoAttack", "pgd50_acc": "PGD-50", "clean_acc": "clean"}


class _ClaimStats:
    """One metric of the summary rows (:func:`~sstorch.experiments.tables.summarize`), in
    percentage points, with the phrases the claim bullets are made of."""

    def __init__(self, metric: str, by_method: dict[str, dict[str, Any]]) -> None:
        self.metric, self.by_method = metric, by_method

    def stat(self, name: str) -> tuple[float, int] | None:
        """``(100 · mean over seeds, number of seeds)``, or None for a row not measured yet."""
        e = self.by_method.get(name)
        return None if e is None else (100 * e["stats"][self.metric][0], len(e["seeds"]))

    def matched(self, a: str, b: str) -> str:
        """`` (seed-matched …)`` when the two rows ran different seeds but share some."""
        ea, eb = self.by_method.get(a), self.by_method.get(b)
        if ea is None or eb is None or ea["seeds"] == eb["seeds"]:
            return ""
        common = [sd for sd in ea["seeds"] if sd in eb["seeds"]]
        if not common:
            return ""

        def pick(e: dict[str, Any]) -> list[float]:
            return [100 * v for sd, v in zip(e["seeds"], e["vals"][self.metric], strict=True)
                    if sd in common]

        d = fmean(pick(ea)) - fmean(pick(eb))
        return f" (seed-matched, seed{'s' if len(common) > 1 else ''} " \
            f"{', '.join(map(str, common))}: {d:+.2f})"

    def spread(self, *names: str) -> float | None:
        """The larger seed-to-seed std (points) of the rows with ≥ 2 seeds, if any."""
        stds = [100 * self.by_method[n]["stats"][self.metric][1] for n in names
                if n in self.by_method and len(self.by_method[n]["seeds"]) > 1]
        return max(stds) if stds else None

    def noise(self, d: float, *names: str) -> str:
        """``, less than the seed spread ±s`` when the difference is smaller than it."""
        s = self.spread(*names)
        return "" if s is None or abs(d) >= s else f", less than the seed spread ±{s:.2f}"

    def fmt(self, name: str) -> str:
        """```name` 12.34 % (3 seeds)``, or ```name` pending``."""
        v = self.stat(name)
        return f"`{name}` pending" if v is None else f"`{name}` {v[0]:.2f} % ({v[1]} seed" \
            f"{'s' if v[1] > 1 else ''})"


def _within(claim: dict[str, Any], s: _ClaimStats, label: str) -> list[str]:
    """``method`` at most ``points`` below ``reference``: ``d = a - b ≥ -points``."""
    a, b, pts = claim["method"], claim["reference"], float(claim.get("points", 1.5))
    va, vb = s.stat(a), s.stat(b)
    if va is None or vb is None:
        return [f"- {label}: {s.fmt(a)} vs {s.fmt(b)}: **pending**"]
    d = va[0] - vb[0]
    verdict = ("**holds, and matches or beats the reference**" if d >= 0 else
               "**holds**" if d >= -pts else "**does not hold**")
    return [f"- {label}: {s.fmt(a)} vs {s.fmt(b)}: {d:+.2f} points{s.matched(a, b)} → {verdict} "
            f"(bar: at most {pts:g} points below"
            f"{s.noise(d + pts, a, b).replace('less than', 'the margin to the bar is within')})"]


def _beats(claim: dict[str, Any], s: _ClaimStats, label: str) -> list[str]:
    """``method`` above each of ``others``: one sub-bullet per baseline and a verdict."""
    a = claim["method"]
    lines, wins, pending, close = [], 0, 0, 0
    for o in claim.get("others", []):
        va, vo = s.stat(a), s.stat(o)
        if va is None or vo is None:
            pending += 1
            lines.append(f"  - vs {s.fmt(o)}: pending")
            continue
        d = va[0] - vo[0]
        wins += d > 0
        close += bool(s.noise(d, a, o))
        lines.append(f"  - vs {s.fmt(o)}: {d:+.2f} points{s.matched(a, o)} → "
                     f"{'beats' if d > 0 else 'loses'}{s.noise(d, a, o)}")
    n = len(claim.get("others", []))
    verdict = ("**pending**" if pending and wins == n - pending else
               "**beats every one**" if wins == n else
               f"**beats {wins} of {n}**" + (f" ({pending} pending)" if pending else ""))
    if close and verdict != "**pending**":
        verdict += (f" — {close} of the differences {'is' if close == 1 else 'are'} smaller "
                    "than the seed-to-seed spread")
    return [f"- {label}: {s.fmt(a)} against each baseline: {verdict}", *lines]


def _ablation(claim: dict[str, Any], s: _ClaimStats, label: str) -> list[str]:
    """Each of ``others`` relative to ``reference``: ``mean(other) - mean(reference)``."""
    ref = claim["reference"]
    lines = [f"- {label}, relative to {s.fmt(ref)}:"]
    for o in claim.get("others", []):
        vr, vo = s.stat(ref), s.stat(o)
        delta = ("pending" if vr is None or vo is None
                 else f"{vo[0] - vr[0]:+.2f} points{s.matched(o, ref)}"
                 f"{s.noise(vo[0] - vr[0], o, ref)}")
        lines.append(f"  - {s.fmt(o)}: {delta}")
    return lines


CLAIM_CHECKS: dict[str, Callable[[dict[str, Any], _ClaimStats, str], list[str]]] = {
    "within": _within, "beats": _beats, "ablation": _ablation}


def claim_lines(claim: dict[str, Any], by_method: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown bullets that check one manifest claim against the measured means."""
    metric = claim.get("metric", "autoattack_acc")
    label = METRIC_LABELS.get(metric, metric)
    return CLAIM_CHECKS[claim["kind"]](claim, _ClaimStats(metric, by_method), label)


def render_claims(claims: Sequence[dict[str, Any]], summary_rows: Sequence[dict[str, Any]]
                  ) -> str:
    """The manifest's claims checked against the table (markdown bullets)."""
    by_method = {e["method"]: e for e in summary_rows}
    lines = []
    for c in claims:
        if c.get("title"):
            lines.append(f"**{c['title']}**\n")
        lines += claim_lines(c, by_method)
        lines.append("")
    return "\n".join(lines)
