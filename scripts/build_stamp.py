"""Decides whether scripts/install.sh may skip a step: is what is installed up to date?

Two stamps, each a fingerprint of everything its step depends on, written into the virtual
environment after the step succeeds:
  requirements  requirements-dev.txt and the Python running it
  native        every file under csrc/, setup.py, pyproject.toml, soap_cuda/schemas.def, the
                torch version (and its CUDA), the Python version and the build switches; plus
                the built library itself, which must still be where the build left it

    python scripts/build_stamp.py check requirements|native   # exit 0: up to date, 1: not
    python scripts/build_stamp.py write requirements|native
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Environment variables that change what setup.py builds (see its docstring).
BUILD_SWITCHES = ("SOAP_CUDA_FORCE_CUDA", "SOAP_CUDA_FORCE_CPU", "SOAP_CUDA_SKIP_NATIVE",
                  "SOAP_CUDA_DEBUG_INFO", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "CUDA_PATH")
NATIVE_INPUTS = ("setup.py", "pyproject.toml", "soap_cuda/schemas.def")


def _hash_files(root: Path, paths) -> hashlib.sha256:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest


def native_inputs(root: Path) -> list[Path]:
    files = [p for p in (root / "csrc").rglob("*") if p.is_file()]
    return files + [root / name for name in NATIVE_INPUTS if (root / name).is_file()]


def native_fingerprint(root: Path, torch_version: str, environ) -> str:
    """Changes when any source, build file, the torch or Python version, or a switch does."""
    digest = _hash_files(root, native_inputs(root))
    digest.update(f"torch={torch_version}\0python={sys.version}\0".encode())
    for name in BUILD_SWITCHES:
        digest.update(f"{name}={environ.get(name, '')}\0".encode())
    return digest.hexdigest()


def requirements_fingerprint(root: Path) -> str:
    digest = _hash_files(root, [root / "requirements-dev.txt"])
    digest.update(f"python={sys.executable}\0".encode())
    return digest.hexdigest()


def built_library(root: Path) -> Path:
    return root / "soap_cuda" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))


def _library_state(root: Path, environ) -> str | None:
    """The built library's size and mtime ('none' for a pure-Python install), None if missing."""
    if environ.get("SOAP_CUDA_SKIP_NATIVE", "0").strip().lower() in ("1", "true", "yes", "on"):
        return "none"
    lib = built_library(root)
    if not lib.is_file():
        return None
    stat = lib.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _installed_here(root: Path) -> bool:
    """soap_cuda is installed in this environment, and from this checkout."""
    from importlib import metadata

    try:
        dist = metadata.distribution("soap_cuda")
    except metadata.PackageNotFoundError:
        return False
    direct_url = dist.read_text("direct_url.json")
    if not direct_url:
        return False
    url = json.loads(direct_url).get("url", "")
    return url.rstrip("/") == root.as_uri().rstrip("/")


def current_state(kind: str, root: Path = ROOT, environ=os.environ) -> dict:
    if kind == "requirements":
        return {"fingerprint": requirements_fingerprint(root)}
    import torch  # only the native stamp needs it, after the requirements are in

    return {"fingerprint": native_fingerprint(root, f"{torch.__version__}/{torch.version.cuda}",
                                              environ),
            "library": _library_state(root, environ)}


def stamp_path(kind: str) -> Path:
    return Path(sys.prefix) / f"soap_cuda-{kind}.stamp.json"


def is_up_to_date(kind: str, root: Path = ROOT, environ=os.environ) -> bool:
    try:
        stamped = json.loads(stamp_path(kind).read_text())
    except (OSError, ValueError):
        return False
    if kind == "native" and not _installed_here(root):
        return False
    state = current_state(kind, root, environ)
    return state == stamped and state.get("library", "") is not None


def write(kind: str, root: Path = ROOT, environ=os.environ) -> None:
    stamp_path(kind).write_text(json.dumps(current_state(kind, root, environ)))


def main(argv) -> int:
    if len(argv) != 2 or argv[0] not in ("check", "write") or argv[1] not in (
            "requirements", "native"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "check":
        return 0 if is_up_to_date(argv[1]) else 1
    write(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
