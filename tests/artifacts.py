"""What a model artifact holds: ``pickles_in`` finds pickled Python objects by their opcodes, not by
file names (a ``.bin`` or ``.pt`` is a pickle too, and a zip such as torch's holds one inside)."""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path


def is_pickle(blob: bytes) -> bool:
    """Whether ``blob`` is one whole pickle stream: every byte an opcode or its argument, ending in STOP."""
    try:
        last = None
        for op, _, position in pickletools.genops(io.BytesIO(blob)):
            last = (op.name, position)
    except Exception:  # noqa: BLE001 - anything genops cannot read is not a pickle
        return False
    return last is not None and last[0] == "STOP" and last[1] == len(blob) - 1


def pickles_in(folder: Path) -> list[str]:
    """Every file under ``folder``, or member of a zip file there, that is a pickle."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                found += [f"{path}:{name}" for name in archive.namelist() if is_pickle(archive.read(name))]
        elif is_pickle(path.read_bytes()):
            found.append(str(path))
    return found
