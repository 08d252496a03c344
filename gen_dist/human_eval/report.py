"""Tables of human scores from human_eval.sqlite: printed by `launch/rate.py --report`, written as
markdown next to the database, and added to a study's report.md / report.html by
`launch/ablate.py --report-only` when the study folder holds a database."""

from __future__ import annotations

import html
from pathlib import Path

from gen_dist.human_eval import db, scores

DB_NAME = "human_eval.sqlite"


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    lo, hi = ci
    return "–" if lo != lo else f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def tables(path: str | Path, resamples: int = scores.BOOTSTRAP) -> list[tuple[str, list[str], list[list[str]], str]]:
    """[(title, headers, rows, note)] for each protocol with judgements in the database."""
    out = []
    rows = db.judgements(path, "real-or-fake")
    if rows:
        table = [[s.model, str(s.judgements), str(s.raters), f"{_pct(s.error_rate)} {_ci(s.error_ci)}",
                  f"{_pct(s.fake_as_real)} {_ci(s.fake_as_real_ci)}"] for s in scores.real_or_fake(rows, resamples)]
        out.append(("Real or fake (HYPE-infinity)",
                     ["model", "judgements", "raters", "human error rate [95% CI]", "fakes judged real [95% CI]"],
                     table, "Human error rate: (fakes judged real + reals judged fake) / all judgements of the "
                            "model's block (its samples and as many real test images); 50% means raters could not "
                            "tell its samples from real images, higher is better. Intervals: bootstrap over raters "
                            "and images."))
    rows = db.judgements(path, "pairwise")
    if rows:
        fmt = lambda ci: f"[{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
        table = [[str(s.rank), s.model, str(s.comparisons), str(s.raters), f"{_pct(s.win_rate)} {_ci(s.win_ci)}",
                  f"{s.strength:.3f} {fmt(s.strength_ci)}", f"{s.rank_ci[0]:g}–{s.rank_ci[1]:g}"]
                 for s in scores.pairwise(rows, resamples)]
        out.append(("Pairwise (2AFC)",
                     ["rank", "model", "comparisons", "raters", "win rate [95% CI]",
                      "Bradley-Terry strength [95% CI]", "rank 95% CI"],
                     table, "Win rate: the share of its comparisons a model's image was picked as the more real "
                            "looking. Bradley-Terry strengths sum to 1; P(A picked over B) = s_A / (s_A + s_B). "
                            "Intervals: bootstrap over raters and image pairs."))
    return out


def markdown(path: str | Path, level: str = "##", resamples: int = scores.BOOTSTRAP) -> str:
    parts = []
    for title, headers, rows, note in tables(path, resamples):
        lines = [f"{level} {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        parts.append("\n".join(lines + ["", note]))
    return "\n\n".join(parts) if parts else "No judgements yet."


def _html(path: str | Path) -> str:
    parts = []
    for title, headers, rows, note in tables(path):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        parts.append(f"<h3>{html.escape(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                     f"</table><p>{html.escape(note)}</p>")
    return "".join(parts) or "<p>No judgements yet.</p>"


def write(path: str | Path, out: str | Path | None = None) -> tuple[str, Path]:
    """The markdown report of a database, written to ``out`` (default: human_eval.md beside it)."""
    text = "# Human evaluation\n\n" + f"From `{path}`.\n\n" + markdown(path) + "\n"
    out = Path(out) if out else Path(path).with_name("human_eval.md")
    out.write_text(text)
    return text, out


def add_to_study_report(study_dir: str | Path, report_md: str | Path) -> bool:
    """Append the human scores to a study's report.md (and report.html) when study_dir holds a database."""
    database = Path(study_dir) / DB_NAME
    if not database.is_file():
        return False
    report_md = Path(report_md)
    section = f"## Human evaluation\n\nJudgements in `{DB_NAME}` (launch/rate.py).\n\n" + markdown(database, "###")
    report_md.write_text(report_md.read_text().rstrip("\n") + "\n\n" + section + "\n")
    page = report_md.with_suffix(".html")
    if page.is_file():
        block = f"<h2>Human evaluation</h2><p>Judgements in {DB_NAME} (launch/rate.py).</p>{_html(database)}\n"
        text = page.read_text()
        page.write_text(text.replace("</body>", block + "</body>", 1) if "</body>" in text else text + block)
    return True
