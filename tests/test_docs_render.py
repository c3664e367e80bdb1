"""README.rst and every docs/*.rst render without a docutils warning or error (a
malformed table renders as an error message in place of the table)."""

from __future__ import annotations

import io
from pathlib import Path

import docutils.core
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


class DocsRenderTests(SynchronousTestCase):
    def test_every_page_renders_cleanly(self) -> None:
        pages = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
        self.assertGreater(len(pages), 10)
        for page in pages:
            messages = io.StringIO()
            docutils.core.publish_doctree(
                page.read_text(encoding="utf-8"),
                source_path=str(page.relative_to(ROOT)),
                settings_overrides={
                    "report_level": 2,  # warnings and worse
                    "halt_level": 5,  # never raise: collect them all
                    "warning_stream": messages,
                    "syntax_highlight": "none",  # code blocks need no Pygments
                },
            )
            self.assertEqual(messages.getvalue(), "", page.name)
