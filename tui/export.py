"""Export a session to Markdown or JSON, written atomically (temp file in the same folder, then rename)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from steerling_lite import write_text_atomic

from .concepts import steering_text
from .steering_record import steering_record
from .store import Session

EXPORT_FORMATS = ("markdown", "json")


def session_to_dict(session: Session) -> dict[str, Any]:
    """A JSON-able dict of the whole session: settings, steering, turns (with which steering produced
    which steps and tokens: ``steering_segments`` and ``token_segments``, see
    :mod:`tui.steering_record`), attributions, audits."""
    return {
        "format": "steerling-lite.session/1",
        "id": session.id,
        "title": session.title,
        "model": session.model,
        "system": session.system,
        "settings": session.settings,
        "steering": session.steering,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "turns": [
            {
                "prompt": t.prompt,
                "output": t.output,
                "prompt_ids": t.prompt_ids,
                "token_ids": t.token_ids,
                "settings": t.settings,
                "steering": t.steering,
                "steering_segments": t.steering_segments,
                "token_segments": t.token_segments,
                "seed": t.seed,
                "stop_reason": t.stop_reason,
                "tokens_per_s": t.tokens_per_s,
                "unsteered": t.unsteered,
                "attributions": [{"start": a.start, "end": a.end, **a.data} for a in t.attributions],
                "audits": [{"start": a.start, "end": a.end, **a.data} for a in t.audits],
            }
            for t in session.turns
        ],
    }


def session_to_json(session: Session) -> str:
    return json.dumps(session_to_dict(session), indent=2, ensure_ascii=False) + "\n"


def _fence(text: str) -> str:
    """A fenced block that no backtick run inside ``text`` can close."""
    longest = max((len(run) for run in text.split("\n") for run in _backtick_runs(run)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _backtick_runs(line: str) -> list[str]:
    runs, cur = [], ""
    for ch in line:
        if ch == "`":
            cur += ch
        elif cur:
            runs.append(cur)
            cur = ""
    if cur:
        runs.append(cur)
    return runs


def session_to_markdown(session: Session) -> str:
    """The session as Markdown: a heading, settings, then each prompt and output (fenced, verbatim)."""
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(session.created_at)) if session.created_at else ""
    out = [f"# {session.title}", "", f"- model: `{session.model}`"]
    if created:
        out.append(f"- created: {created}")
    settings = ", ".join(f"{k} {v}" for k, v in session.settings.items() if v is not None)
    if settings:
        out.append(f"- settings: {settings}")
    out.append(f"- steering panel: {steering_text(session.steering)}")
    if session.system:
        out += ["", "## System", "", _fence(session.system)]
    for i, t in enumerate(session.turns, 1):
        out += ["", f"## Turn {i}", "", "**Prompt**", "", _fence(t.prompt), "", "**Output**", "", _fence(t.output)]
        meta = [f"seed {t.seed}" if t.seed is not None else "", f"stop: {t.stop_reason}" if t.stop_reason else "",
                steering_record(t.steering_segments, t.steering, bool(t.settings.get("steering_changed_while_generating")))]
        out += ["", "_" + "; ".join(m for m in meta if m) + "_"]
        if t.unsteered is not None:
            out += ["", "**Unsteered (same seed)**", "", _fence(t.unsteered)]
        for a in t.attributions:
            out += attribution_markdown("Attribution", a.start, a.end, a.data)
        for a in t.audits:
            out += attribution_markdown("Audit", a.start, a.end, a.data) + audit_markdown(a.data)
    return "\n".join(out) + "\n"


def attribution_markdown(what: str, start: int, end: int, data: dict[str, Any]) -> list[str]:
    """Lines for the concepts (and input tokens) of an attribution or audit of tokens ``start..end``."""
    out = ["", f"**{what} of tokens {start}..{end - 1}**" + (f" (`{data['text']}`)" if data.get("text") else ""), ""]
    for kind in ("known", "discovered"):
        rows = data.get(kind) or []
        if rows:
            out.append(f"- {kind}: " + ", ".join(f"{r['label']} {float(r['share']):.1%}" for r in rows))
    if data.get("epsilon") is not None:
        out.append(f"- epsilon: {float(data['epsilon']):.1%}")
    if data.get("inputs"):
        top = sorted(data["inputs"], key=lambda r: -abs(float(r["score"])))[:8]
        method = f" ({data['input_method']})" if data.get("input_method") else ""
        out.append(f"- input tokens{method}: " + ", ".join(f"`{r['text']!s}` {float(r['score']):+.2f}" for r in top))
    return out


def audit_markdown(data: dict[str, Any]) -> list[str]:
    """The audit's own lines: the nearest training chunks, what could not be computed, and the
    answer regenerated with a concept suppressed."""
    out = []
    for n in data.get("neighbours") or []:
        shared = f" (shared: {', '.join(n['shared'])})" if n.get("shared") else ""
        out.append(f"- training chunk {n['rank']}: {float(n['similarity']):.3f} `{n['source']}:{n['line']}` "
                   f"{json.dumps(n['text'], ensure_ascii=False)}{shared}")
    for axis, note in (data.get("notes") or {}).items():
        out.append(f"- {axis}: {note}")
    sup = data.get("suppressed")
    if sup:
        out += ["", f"**Regenerated with {sup['label']} suppressed (seed {sup.get('seed')})**", "",
                _fence(str(sup.get("text", "")))]
    return out


def export_session(session: Session, path: str | Path, fmt: str) -> Path:
    """Write ``session`` to ``path`` as ``markdown`` or ``json``; returns the path written.

    Raises:
        ValueError: unknown format; OSError: the file cannot be written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    text = session_to_markdown(session) if fmt == "markdown" else session_to_json(session)
    return write_text_atomic(path, text)
