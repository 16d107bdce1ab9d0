"""The `kiln optimize --output` folder, replaced as a whole: a run writes into a staging folder
next to it and swaps it in at the end, so the folder always tells one run's story. A failed run
leaves a folder that says Failed everywhere, and no model.json a server could take."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from kiln.api.errors import KilnInputError
from kiln.api.layout import MODEL_DOCUMENT, STATUS_FILE
from kiln.api.spec import OptimizedModel
from kiln.api.status import OptimizedModelStatus, Phase
from kiln.cli.leftovers import owned_prefix, sweep

LOG_FILE = "kiln.log"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
# What a Kiln output folder may hold: anything else means it is someone else's folder.
OWN_FILES = frozenset({STATUS_FILE, MODEL_DOCUMENT, REPORT_MD, REPORT_HTML, LOG_FILE})


def check_replaceable(folder: Path) -> None:
    """Refuse, before anything runs, to replace a folder that is not a Kiln output folder."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise KilnInputError(f"--output {folder}", "exists and is not a folder")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in OWN_FILES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise KilnInputError(
            f"--output {folder}",
            f"exists and holds files Kiln did not write ({shown}); choose another folder",
        )


class OutputFolder:
    """A staging folder beside `final`, swapped in by `commit`."""

    def __init__(self, final: Path) -> None:
        check_replaceable(final)
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        # What a run killed before its `finally` left beside the folder.
        for kind in (self._staging_prefix, self._old_prefix):
            sweep(final.parent, kind)
        staging = owned_prefix(self._staging_prefix)
        self.staging = Path(tempfile.mkdtemp(prefix=staging, dir=final.parent))
        # mkdtemp makes it private (0700); the folder it becomes is an ordinary one.
        umask = os.umask(0)
        os.umask(umask)
        self.staging.chmod(0o777 & ~umask)

    @property
    def _staging_prefix(self) -> str:
        return f".{self.final.name}.kiln-"

    @property
    def _old_prefix(self) -> str:
        return f".{self.final.name}.kiln-old-"

    @property
    def log(self) -> Path:
        return self.staging / LOG_FILE

    def write(
        self,
        name: str,
        status: OptimizedModelStatus,
        model: OptimizedModel | None,
        markdown: bool = True,
        html: bool = True,
        verdict: list[str] | None = None,
    ) -> None:
        """Status, reports, and model.json only for a run that did not fail."""
        from kiln.builder.report import render_html, render_markdown

        (self.staging / STATUS_FILE).write_text(json.dumps(status.to_wire(), indent=2) + "\n")
        if model is not None and status.phase is not Phase.FAILED:
            document = json.dumps(model.to_wire(), indent=2) + "\n"
            (self.staging / MODEL_DOCUMENT).write_text(document)
        if markdown:
            (self.staging / REPORT_MD).write_text(render_markdown(name, status, verdict or []))
        if html:
            (self.staging / REPORT_HTML).write_text(render_html(name, status, verdict or []))

    def commit(self) -> None:
        """Swap the staging folder in; the previous run's folder is removed."""
        old = self.final.with_name(f"{owned_prefix(self._old_prefix)}0")
        if self.final.exists():
            self.final.replace(old)
        self.staging.replace(self.final)
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
