"""Deeper conformance findings from dciodvfy (dicom3tools), as warnings that never block.

``dciodvfy`` checks an instance against its IOD (PS3.3) and prints one finding per line::

    Error - Missing attribute Type 1 Required Element=<Rows> Module=<Image Pixel>
    Warning - Value dubious for this VR - (0x0008,0x1070) PN Operators' Name  PN [1] = <x> - ...

Findings may quote attribute values, and values can be patient data, so every quoted value
(``= <...>`` and the rest of that clause) is cut before a finding is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_FINDINGS = 50
MAX_FINDING_CHARS = 300
_LEVEL = re.compile(r"\b(Error|Warning)\s+-\s+")
_VALUE = re.compile(r"\s+=\s*<[^>]*>?")
_SPACES = re.compile(r"\s{2,}")


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def parse_dciodvfy(output: str, limit: int = MAX_FINDINGS) -> list[Finding]:
    """Findings in dciodvfy's output, values removed, duplicates dropped, at most ``limit``."""
    found: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for line in output.splitlines():
        m = _LEVEL.search(line)
        if not m:
            continue
        level: Literal["error", "warning"] = "error" if m.group(1) == "Error" else "warning"
        # The tag prefix some lines carry before the level is useful context: keep it.
        prefix = line[: m.start()].strip(" -")
        message = line[m.end() :]
        if prefix:
            message = f"{prefix}: {message}"
        message = _SPACES.sub(" ", _VALUE.sub("", message)).strip(" -")[:MAX_FINDING_CHARS]
        key = (level, message)
        if not message or key in seen:
            continue
        seen.add(key)
        found.append(Finding(level, message))
        if len(found) >= limit:
            break
    return found
