"""scripts/build_stamp.py: install.sh skips a rebuild only while nothing the build depends on
has changed. Checked on a copy of the build inputs, one change at a time."""
import importlib.util
import shutil

import pytest

from conftest import HAS_SOURCE_TREE, REPO_ROOT, SOURCE_TREE_SKIP_REASON

if not HAS_SOURCE_TREE:
    pytest.skip(SOURCE_TREE_SKIP_REASON, allow_module_level=True)

_spec = importlib.util.spec_from_file_location("build_stamp", REPO_ROOT / "scripts" /
                                               "build_stamp.py")
stamp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stamp)

TORCH = "2.14.1+cu130/13.0"


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(REPO_ROOT / "csrc", tmp_path / "csrc")
    for name in stamp.NATIVE_INPUTS + ("README.md", "requirements-dev.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    (tmp_path / "soap_cuda" / "modules.py").write_text("# Python only\n")
    return tmp_path


def _append(path, text="\n// changed\n"):
    path.write_text(path.read_text() + text)


CHANGES = {
    "a kernel source": lambda root: _append(root / "csrc" / "perturb" / "perturb_kernels.cu"),
    "a C++ source": lambda root: _append(root / "csrc" / "fa_linear" / "fa_linear.cpp"),
    "a header": lambda root: _append(root / "csrc" / "common" / "philox.h"),
    "a new file": lambda root: (root / "csrc" / "extra.cpp").write_text("int x;\n"),
    "setup.py": lambda root: _append(root / "setup.py", "\n# changed\n"),
    "schemas.def": lambda root: _append(root / "soap_cuda" / "schemas.def", "\n"),
    "pyproject.toml": lambda root: _append(root / "pyproject.toml", "\n"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_build_input_changes_the_fingerprint(tree, change):
    before = stamp.native_fingerprint(tree, TORCH, {})
    assert stamp.native_fingerprint(tree, TORCH, {}) == before  # deterministic
    CHANGES[change](tree)
    assert stamp.native_fingerprint(tree, TORCH, {}) != before


def test_torch_version_and_build_switches_change_the_fingerprint(tree):
    base = stamp.native_fingerprint(tree, TORCH, {})
    assert stamp.native_fingerprint(tree, "2.13.0+cpu/None", {}) != base
    for switch in stamp.BUILD_SWITCHES:
        assert stamp.native_fingerprint(tree, TORCH, {switch: "1"}) != base, switch


def test_files_outside_the_build_leave_it_alone(tree):
    base = stamp.native_fingerprint(tree, TORCH, {})
    _append(tree / "README.md", "\nmore docs\n")
    _append(tree / "soap_cuda" / "modules.py", "\n# python code needs no rebuild\n")
    (tree / "csrc" / "fa_linear" / "fa_linear.cpp").touch()  # a new mtime, the same content
    assert stamp.native_fingerprint(tree, TORCH, {"UNRELATED": "1"}) == base


def test_a_missing_library_is_not_up_to_date(tree, monkeypatch, tmp_path):
    monkeypatch.setattr(stamp.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(stamp, "_installed_here", lambda root: True)
    lib = stamp.built_library(tree)
    lib.write_bytes(b"library")
    stamp.write("native", tree, {})
    assert stamp.is_up_to_date("native", tree, {})
    lib.write_bytes(b"rebuilt by hand")                  # another library than the stamped one
    assert not stamp.is_up_to_date("native", tree, {})
    stamp.write("native", tree, {})
    lib.unlink()
    assert not stamp.is_up_to_date("native", tree, {})
    assert stamp.is_up_to_date("native", tree, {"SOAP_CUDA_SKIP_NATIVE": "1"}) is False
    stamp.write("native", tree, {"SOAP_CUDA_SKIP_NATIVE": "1"})  # a pure-Python install
    assert stamp.is_up_to_date("native", tree, {"SOAP_CUDA_SKIP_NATIVE": "1"})


def test_a_change_after_the_stamp_is_seen(tree, monkeypatch, tmp_path):
    monkeypatch.setattr(stamp.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(stamp, "_installed_here", lambda root: True)
    stamp.built_library(tree).write_bytes(b"library")
    stamp.write("native", tree, {})
    _append(tree / "csrc" / "feedback_sync" / "sync_element.h")
    assert not stamp.is_up_to_date("native", tree, {})
    assert not stamp.is_up_to_date("native", tree, {"TORCH_CUDA_ARCH_LIST": "9.0"})


def test_requirements_stamp_follows_the_requirements_file(tree, monkeypatch, tmp_path):
    monkeypatch.setattr(stamp.sys, "prefix", str(tmp_path))
    assert not stamp.is_up_to_date("requirements", tree)
    stamp.write("requirements", tree)
    assert stamp.is_up_to_date("requirements", tree)
    _append(tree / "requirements-dev.txt", "\nscipy\n")
    assert not stamp.is_up_to_date("requirements", tree)
