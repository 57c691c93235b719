"""What ``tipim protect`` reads: photo files and folders, turned into stable ids, plus every file
it will not read and why (a person should never wonder where a photo went)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tipim.files import IMAGE_SUFFIXES, LOCK_NAME, READABLE, read_jsonl


@dataclass(frozen=True)
class Item:
    """One input of a run, a photo or an aligned face: what names its outputs, and where it is read."""

    id: str  # names the output: relative path without suffix, unique within a run
    path: str  # the source as the user gave it (joined with the folder they passed)


@dataclass(frozen=True)
class Ignored:
    path: str
    reason: str  # short and countable: "not a photo (.txt)", "hidden file", ...


def _walk(folder: Path, exclude: set[str], seen: set[str], ignored: list[Ignored]):
    """Files under ``folder``, symlinked folders followed once (a loop is reported, not
    followed forever), hidden entries and the run's own output folder left out."""
    real = os.path.realpath(folder)
    if real in seen:
        ignored.append(Ignored(str(folder), "symbolic link loop (folder already scanned)"))
        return
    seen.add(real)
    if (folder / LOCK_NAME).exists():
        ignored.append(Ignored(str(folder), "a tipim output folder (already protected)"))
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        ignored.append(Ignored(str(folder), f"folder not readable ({e.strerror})"))
        return
    for e in entries:
        path = Path(folder) / e.name
        if e.name.startswith("."):
            ignored.append(Ignored(str(path), "hidden file"))
            continue
        try:
            is_dir = e.is_dir()  # follows links; a looping link raises or says False
        except OSError:
            is_dir = False
        if is_dir:
            if os.path.realpath(path) in exclude:
                continue  # this run's own outputs
            yield from _walk(path, exclude, seen, ignored)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            yield path  # unreadable, looping or dangling files get their own manifest line
        elif e.is_symlink() and not os.path.exists(path):
            ignored.append(Ignored(str(path), "broken or looping symbolic link"))
        else:
            ignored.append(Ignored(str(path), f"not a photo ({path.suffix.lower() or 'no suffix'})"))


def _unique_ids(pairs: list[tuple[str, str, Path]]) -> list[Item]:
    """``(id, longer id, path)``: ids that clash (``a.jpg`` beside ``a.png``; two ``me.jpg`` from
    two folders) take their longer form (suffix kept, folders named), so outputs never collide
    and a re-run finds the same ids."""
    count = Counter(i for i, _, _ in pairs)
    out = [Item(long if count[pid] > 1 else pid, str(path)) for pid, long, path in pairs]
    ids = Counter(i.id for i in out)
    if max(ids.values(), default=1) > 1:
        clash = sorted(i for i, n in ids.items() if n > 1)
        raise ValueError(f"photos with the same name given twice: {clash}; pass each photo once")
    return out


def find_photos(sources: list[str] | str, root: str | None = None, exclude: list[str | Path] = ()) -> tuple[list[Item], list[Ignored]]:
    """Photo files and folders (recursively), or a ``protocol.json`` (the photos its probes
    were aligned from, found through the aligned root's ``alignment.jsonl``). Returns the photos
    sorted by id, and the files that will not be read, each with its reason."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    skip = {os.path.realpath(p) for p in exclude}
    pairs: list[tuple[str, str, Path]] = []
    ignored: list[Ignored] = []
    for src in map(Path, sources):
        if src.suffix == ".json" and src.is_file():
            from tipim.evaluation.protocol import load_protocol

            proto = load_protocol(src)
            base = Path(root or proto["root"])
            origin = {r["output"]: r["source"] for r in read_jsonl(base / "alignment.jsonl") if r.get("status") == "ok"}
            for p in proto["probes"]:
                aligned = str(base / p["path"])
                if aligned not in origin:
                    raise FileNotFoundError(f"{aligned} is not in {base / 'alignment.jsonl'}; re-run tipim data align")
                pid = str(Path(p["path"]).with_suffix(""))
                pairs.append((pid, pid, Path(origin[aligned])))
        elif src.is_dir():
            for f in _walk(src, skip, set(), ignored):
                rel = f.relative_to(src)
                pairs.append((str(rel.with_suffix("")), str(rel), f))
        elif src.suffix.lower() in IMAGE_SUFFIXES or src.is_file() or src.is_symlink():
            named = str(Path(*[p for p in src.parts if p not in ("/", "..", ".")]))
            pairs.append((src.stem, named, src))  # unreadable or missing files are reported by the loader
        else:
            raise FileNotFoundError(f"{src}: no such file or folder")
    return sorted(_unique_ids(pairs), key=lambda i: i.id), ignored


def describe_ignored(ignored: list[Ignored]) -> str:
    """``3 files not read: 2 not a photo (.txt), 1 hidden file`` (empty when none)."""
    if not ignored:
        return ""
    kinds = Counter(i.reason for i in ignored)
    return f"{len(ignored)} files not read: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))


__all__ = ["Ignored", "Item", "describe_ignored", "find_photos", "READABLE"]
