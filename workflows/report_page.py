"""The report page: one self-contained HTML file (``report/index.html``) to open in a browser or
send to a colleague — the status tables, the failed and resumed tasks, and every plot of
:mod:`.report`, embedded (no file beside it and no network needed)."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from cagoflow import __version__
from cagoflow.io import atomic_write_text
from cagoflow.workflows.status import TextTable, failure_lines, progress_table, resumed_trainings, science_table

if TYPE_CHECKING:
    from cagoflow.workflows.report import Image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.9em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; vertical-align: bottom; }
p.note { color: #666; font-size: 0.85em; margin: 0.1em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figure img { max-width: 620px; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; }
"""


def write_report_page(figures: Mapping[str, Any], images: Sequence["Image"], path: Path, name: str) -> Path:
    """Write the page of campaign ``name`` from :func:`campaign_figures` and the written plots."""
    from cagoflow.workflows.report import SECTIONS

    parts = [
        f"<h1>{_text(name)}: campaign report</h1>",
        f"<p>{_text(figures['workdir'])} · {figures['iterations_asked']} iterations asked · "
        f"{_text(figures['run']['words'])} · written {time.strftime('%Y-%m-%d %H:%M %Z')} by cagoflow {__version__}</p>",
    ]
    if figures["stopped"]:
        stop = figures["stopped"]
        parts.append(f"<p><b>stopped early at iteration {stop.get('iteration')}:</b> {_text(stop.get('reason', ''))}</p>")
    for title, table in (("tasks per stage", progress_table(figures)), ("figures per iteration and system", science_table(figures))):
        parts.append(f"<h2>{title}</h2>" + _table(table))
    parts += _task_lists(figures)
    for section in SECTIONS:
        chosen = [image for image in images if image.section == section]
        if chosen:
            parts.append(f"<h2>{section}</h2><div class='figures'>" + "".join(_figure(image) for image in chosen) + "</div>")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_text(name)}: campaign report</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    return atomic_write_text(path, page)


def _text(value: Any) -> str:
    return html.escape(str(value))


def _table(table: TextTable) -> str:
    heads, rows, notes = table
    head = "".join(f"<th>{_text(cell).replace(chr(10), '<br>')}</th>" for cell in heads)
    body = "".join("<tr>" + "".join(f"<td>{_text(cell).replace(chr(10), '<br>')}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>" + "".join(
        f"<p class='note'>{_text(note)}</p>" for note in notes
    )


def _task_lists(figures: Mapping[str, Any]) -> list[str]:
    """The failed tasks with their reason, and the trainings resumed from a checkpoint."""
    parts = []
    lists = (("failed tasks", failure_lines(figures)), ("trainings resumed from an interrupted run's checkpoint", resumed_trainings(figures)))
    for title, lines in lists:
        if lines:
            parts.append(f"<h2>{title}</h2><ul>" + "".join(f"<li>{_text(line)}</li>" for line in lines) + "</ul>")
    return parts


def _figure(image: "Image") -> str:
    data = base64.b64encode(Path(image.path).read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{_text(image.title)}'>"
            f"<figcaption>{_text(image.title)} ({_text(Path(image.path).name)})</figcaption></figure>")  # fmt: skip
