"""``cagoflow report``'s page in a real headless browser (Debian's Chromium): of a real DeePMD-kit
campaign, the page renders, every image loads, no script error; the screenshot is kept beside
the page (``report/screenshot.png``) for a person to look at."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from cagoflow.cli import app
from real_components import missing

#: Injected into a copy of the page (the page itself has no script): records script errors and,
#: once loaded, how many images there are and how many decoded to a picture.
CHECK = """<script>
window.onerror = (message) => { document.documentElement.dataset.errors = (document.documentElement.dataset.errors || '') + message + ';'; };
window.addEventListener('load', () => {
  const images = [...document.images];
  document.documentElement.dataset.images = images.length;
  document.documentElement.dataset.loaded = images.filter((image) => image.complete && image.naturalWidth > 0).length;
});
</script>"""


def chromium() -> list[str]:
    program = shutil.which("chromium") or shutil.which("chromium-browser")
    if program is None:
        missing("Chromium (the Debian package chromium)")
    return [program, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]


def test_the_report_page_renders_with_every_image_in_a_headless_browser(deepmd_campaign, tmp_path):
    browser = chromium()
    folder = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(deepmd_campaign), "-o", str(folder)])
    assert result.exit_code == 0, result.output
    page = folder / "index.html"
    assert f"open in a browser: {page}" in " ".join(result.output.split())
    text = page.read_text()
    for title in ("tasks per stage", "figures per iteration and system", "learning curves", "CAGO structures",
                  "calibration per iteration"):  # fmt: skip
        assert f"<h2>{title}</h2>" in text, title
    for image in ("learning-curve.png", "cago-structures.png", "calibration-iter-000.png", "calibration-iter-001.png"):
        assert f"({image})</figcaption>" in text and (folder / image).exists(), image
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("<head>", "<head>" + CHECK, 1))
    dom = subprocess.run([*browser, "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = re.search(r"<html[^>]*>", dom.stdout).group(0)
    images, loaded = (int(re.search(rf'data-{key}="(\d+)"', html).group(1)) for key in ("images", "loaded"))
    assert images == text.count("<img ") >= 10 and loaded == images, html
    assert "data-errors" not in html, html
    assert "Uncaught" not in dom.stderr and ":CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    screenshot = folder / "screenshot.png"
    shot = subprocess.run([*browser, "--window-size=1300,2400", f"--screenshot={screenshot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert shot.returncode == 0 and screenshot.stat().st_size > 50_000, shot.stderr[-2000:]
    assert Path(screenshot).read_bytes().startswith(b"\x89PNG")
