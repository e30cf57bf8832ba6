"""Build soap_cuda: the native extension (CPU kernels, plus CUDA kernels when possible) and the package.

Environment switches (read at build time):
  SOAP_CUDA_FORCE_CUDA=1   build the CUDA kernels or fail loudly saying why
  SOAP_CUDA_FORCE_CPU=1    build the CPU kernels only, even when CUDA could be built
  SOAP_CUDA_SKIP_NATIVE=1  build nothing native: a pure-Python install (the fallback backend)
  SOAP_CUDA_DEBUG_INFO=1   compile with debug info (-g); off by default: it doubles the compile time
  TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0+PTX": A100, H100, PTX for newer)
  MAX_JOBS                 parallel compile jobs (ninja)
  CUDA_HOME / CUDA_PATH    the CUDA toolkit; otherwise found from nvcc or /usr/local/cuda

Build with `pip install --no-build-isolation -e .`: the extension must compile against the torch
already installed (its headers and ABI); an isolated build would fetch a different torch.
Object files persist in build/native/<python>-torch<version>-<cpu|cuda>/ (editable installs and
wheels alike), so ninja recompiles only the translation units whose sources or headers changed;
a new torch or Python gets a directory of its own, hence a clean build.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) and (
        os.path.isfile(os.path.join(path, "bin", "nvcc")))


def _nvcc_toolkit_root():
    """The toolkit behind `nvcc` on PATH, also when nvcc is a wrapper script (not a symlink)."""
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    candidate = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if _is_toolkit(candidate):
        return candidate
    try:  # a wrapper: ask nvcc where its own tree is (`#$ TOP=...` in its dry-run output)
        out = subprocess.run([nvcc, "-v", "--dryrun", "-c", "x.cu"], capture_output=True,
                             text=True, timeout=30)
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith("#$ TOP="):
                top = os.path.realpath(os.path.join(line.split("=", 1)[1].strip(), ".."))
                return top if _is_toolkit(top) else None
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def _find_cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if _is_toolkit(candidate):
            return candidate
    for candidate in (_nvcc_toolkit_root(), "/usr/local/cuda"):
        if _is_toolkit(candidate):
            return candidate
    return None


# torch.utils.cpp_extension reads CUDA_HOME once, at import: settle it first.
_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")


def _wheel_cuda_includes():
    """cuBLAS/cuSPARSE/... headers that CUDA builds of torch ship as pip packages (nvidia/*)."""
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted({d for d in dirs if os.path.isdir(d)})


def _extensions():
    if _flag("SOAP_CUDA_SKIP_NATIVE"):
        print("soap_cuda: SOAP_CUDA_SKIP_NATIVE=1, pure-Python install", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils import cpp_extension

    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if cpp_extension.CUDA_HOME is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME, or put nvcc on PATH)")
    if _flag("SOAP_CUDA_FORCE_CPU"):
        reasons.append("SOAP_CUDA_FORCE_CPU=1")
    with_cuda = not reasons
    if _flag("SOAP_CUDA_FORCE_CUDA") and not with_cuda:
        raise RuntimeError("soap_cuda: SOAP_CUDA_FORCE_CUDA=1 but the CUDA kernels cannot be "
                           "built: " + "; ".join(reasons))
    print("soap_cuda: building " + ("CPU and CUDA kernels (CUDA_HOME=%s, arch %s)" % (
        cpp_extension.CUDA_HOME, os.environ["TORCH_CUDA_ARCH_LIST"]) if with_cuda else
        "CPU kernels only (%s)" % "; ".join(reasons)), file=sys.stderr)

    csrc = os.path.join(ROOT, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    cuda_only = [s for s in sources if s.endswith("_cuda.cpp")]
    sources = [s for s in sources if s not in cuda_only]
    if with_cuda:
        sources += cuda_only + sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
    sources = [os.path.relpath(s, ROOT) for s in sources]
    build_dir = os.path.join(ROOT, "build", "native", "py%d%d-torch%s-%s" % (
        sys.version_info[0], sys.version_info[1], torch.__version__, "cuda" if with_cuda else "cpu"))
    sources = _unity_sources(sources, os.path.relpath(build_dir, ROOT))

    include_dirs = [csrc, os.path.join(ROOT, "soap_cuda")]  # soap_cuda/ holds schemas.def
    # The C++ standard comes from torch (C++17 or 20 by version). -fno-trapping-math lets GCC
    # vectorise loops with selects (it changes no result). -ffp-contract=off: the noise and
    # estimator math must round like the Python reference and the CUDA kernels (which use
    # explicitly rounded intrinsics); hosts whose baseline ISA has FMA (aarch64) would fuse.
    # -g0 unless asked: Python's own CFLAGS carry -g, and debug info for torch's templates costs
    # more compile time than the code itself.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]
    cxx.append("-g" if _flag("SOAP_CUDA_DEBUG_INFO") else "-g0")
    extra_link = ["-fopenmp"]
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    define_macros = []
    if with_cuda:
        include_dirs += _wheel_cuda_includes()
        define_macros.append(("SOAP_CUDA_WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "soap_cuda._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=extra_link)
    else:
        ext = cpp_extension.CppExtension(
            "soap_cuda._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=extra_link)
    return [ext], {"build_ext": _persistent_build_ext(cpp_extension.BuildExtension, build_dir)}


# A C++ file that says this in its text keeps a translation unit of its own (see _unity_sources).
OWN_UNIT_MARK = "soap_cuda-build: own translation unit"


def _unity_sources(sources, build_dir):
    """Host C++ files compiled together, a handful of translation units instead of one per file:
    most of each file's compile time is parsing the same torch headers. The CPU files form one
    unit, the CUDA host files (*_cuda.cpp) another; .cu files, and files marked OWN_UNIT_MARK
    (own compiler pragmas, or heavy enough to compile in parallel with the rest), stay alone.
    Each unit is a generated file of #includes; ninja's depfiles still track every source."""
    groups, alone = {"cpu_unit.cpp": [], "cuda_host_unit.cpp": []}, []
    for src in sources:
        if src.endswith(".cu") or OWN_UNIT_MARK in open(os.path.join(ROOT, src)).read():
            alone.append(src)
        else:
            groups["cuda_host_unit.cpp" if src.endswith("_cuda.cpp") else "cpu_unit.cpp"].append(src)
    units = []
    for name, members in groups.items():
        if not members:
            continue
        unit = os.path.join(build_dir, "unity", name)
        text = "// Generated by setup.py (_unity_sources): one translation unit for these files.\n"
        text += "".join('#include "%s"\n' % os.path.join(ROOT, m) for m in members)
        os.makedirs(os.path.dirname(os.path.join(ROOT, unit)), exist_ok=True)
        path = os.path.join(ROOT, unit)
        if not os.path.isfile(path) or open(path).read() != text:  # unchanged: no rebuild
            with open(path, "w") as f:
                f.write(text)
        units.append(unit)
    return units + alone


def _persistent_build_ext(base, build_dir):
    """BuildExtension whose object files live in build_dir, not in a fresh temporary directory
    (as editable installs would have it): ninja then rebuilds only what changed."""

    class PersistentBuildExtension(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, use_ninja=True, **kwargs)

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = build_dir

    return PersistentBuildExtension


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["soap_cuda", "soap_cuda.*"]),
    package_data={"soap_cuda": ["schemas.def"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
