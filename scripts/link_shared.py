"""Put into this Python's venv, as hard links, the packages of another venv that a lock pins at the
versions that venv already has (scripts/setup_vllm.sh: .venv-vllm takes torch, triton, the CUDA
libraries, ... from .venv, 5 GB it would otherwise download and unpack a second time).

    .venv-vllm/bin/python scripts/link_shared.py .venv scripts/vllm-requirements.lock

Pip then finds them installed at the pinned version and leaves them. Only where both venvs have the
same Python version (compiled modules are built for one); a package this venv has in any version
is left alone. Each package's own files go first and its .dist-info last, so a run cut short leaves
no package that pip would take as installed. A file that cannot be linked (another file system) is
copied; a script whose first line names the other venv's Python is written with this one's.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from importlib.metadata import Distribution, distributions
from pathlib import Path


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pinned(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[canonical(name)] = version.strip()
    return pins


def place(src: Path, dest: Path, other_python: bytes, this_python: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    with src.open("rb") as f:
        head = f.read(2 + len(other_python))
    if head.startswith(b"#!") and head[2:] == other_python:  # a console script of the other venv
        dest.write_bytes(b"#!" + this_python + src.read_bytes()[len(head) :])
        shutil.copymode(src, dest)
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def link(dist: Distribution, src_root: Path, dest_root: Path, pythons: tuple[bytes, bytes]) -> None:
    files = [str(f) for f in dist.files or []]
    # The package before its metadata: pip takes a package as installed by its .dist-info.
    files.sort(key=lambda f: ".dist-info/" in f)
    for rel in files:
        src = src_root / rel
        if not src.is_file():  # RECORD may list a .pyc never written
            continue
        place(src, Path(os.path.normpath(dest_root / rel)), *pythons)


def main() -> int:
    other, lock = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    here = Path(sysconfig.get_paths()["purelib"])
    there = other / here.relative_to(Path(sys.prefix).resolve())
    if not there.is_dir():  # no such venv, or another Python version
        print(f"link_shared: no {there}: nothing shared", file=sys.stderr)
        return 0
    pins = pinned(lock)
    installed = {canonical(d.metadata["Name"]) for d in distributions(path=[str(here)])}
    pythons = (str(other / "bin" / "python").encode(), sys.executable.encode())
    shared = 0
    for dist in distributions(path=[str(there)]):
        name = canonical(dist.metadata["Name"])
        if pins.get(name) != dist.version or name in installed:
            continue
        link(dist, there, here, pythons)
        installed.add(name)
        shared += 1
    print(f"link_shared: {shared} packages linked from {other}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
