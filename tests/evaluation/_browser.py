"""Open a report in headless Chromium (Debian's ``chromium``) and read back what loaded.

The report is served over HTTP from a temporary folder holding it and a small check page that
frames it; after load the page records every image's ``naturalWidth``, every video's
``readyState`` and error, whether every link fetches, and the page text, and Chromium's
``--dump-dom`` prints that record.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

_CHECK = """<!doctype html><html><body><iframe id="f" src="%s" width="1200" height="800"></iframe><pre id="out"></pre>
<script>
const f = document.getElementById('f');
f.addEventListener('load', async () => {
  const d = f.contentDocument, wait = ms => new Promise(r => setTimeout(r, ms));
  for (let i = 0; i < 100; i++) {
    if ([...d.querySelectorAll('video')].every(v => v.readyState >= 1 || v.error)) break;
    await wait(100);
  }
  const res = {images: [...d.images].map(i => ({src: i.getAttribute('src'), width: i.naturalWidth})),
    videos: [...d.querySelectorAll('video')].map(v => ({src: v.getAttribute('src'), ready: v.readyState,
      error: v.error ? v.error.code : null, duration: v.duration})),
    links: [], text: d.body.innerText,
    recommended: (d.getElementById('recommended-checkpoint') || {}).textContent || null};
  for (const a of d.querySelectorAll('a[href]')) {
    let ok = false; try { ok = (await fetch(a.href)).ok; } catch (e) {}
    res.links.push({href: a.getAttribute('href'), ok: ok});
  }
  document.getElementById('out').textContent = 'RESULT' + JSON.stringify(res) + 'END';
});
</script></body></html>"""


def require_chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the report's browser test cannot run")
    return CHROMIUM


def open_in_browser(root: Path, page: str) -> dict:
    """Load ``root/page`` in headless Chromium; return images, videos, links, text and the recommended checkpoint."""
    chromium = require_chromium()
    (root / "_check.html").write_text(_CHECK % page)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/_check.html"
        out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
                              "--virtual-time-budget=15000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    dom = out.stdout
    start, end = dom.find("RESULT{"), dom.find("}END")
    assert start >= 0 and end > start, f"the check page recorded nothing; chromium said: {out.stderr[-1500:]}"
    return json.loads(html.unescape(dom[start + len("RESULT") : end + 1]))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass
