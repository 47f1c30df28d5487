"""Build what a GPU machine without network needs to run ``bench/gpu_check.sh``: one archive.

The ``nvidia-pytriton`` wheel holds tritonserver 2.51, the Python backend, stubs for six Python
versions and 115 MB of shared libraries. This keeps only what the server, the Python backend and
the chosen stubs load (the ``DT_NEEDED`` closure, read with ``readelf``, over the wheel's
``nvidia_pytriton.libs``; everything else they need is a system library, listed in the manifest),
lays it out as the wheel does (so ``server_environment`` finds the libraries), adds a stripped
``libpython`` of the stub's version (used only where the GPU machine has none), and a
``site/`` folder with the Python packages the GPU machine lacks (tritonclient and its
dependencies, pytest, numpy<2 for the stub), installed for the target Python by pip. All of it
goes into ``<out>/bundle.tar.xz`` with ``MANIFEST.json``; the working tree and the archive must
fit the device's carry limit together.

Run: ``python bench/gpu_bundle.py`` (about 2 minutes; ``--no-site`` skips the download), then
carry the printed paths.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / ".gpu-carry"
ARCHIVE = "bundle.tar.xz"
CARRY_LIMIT = 64 << 20  # bytes the device run carries: working tree + carried paths
SITE_ALLOWANCE = 26 << 20  # the site packages, packed (24 MiB measured with nvidia-pytriton 0.7)
STUB = "triton_python_backend_stub"
SITE_PACKAGES = ("tritonclient[http,grpc]", "pytest>=8", "numpy<2")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PRUNED_DIRS = ("tests", "__pycache__", "include")


class BundleError(RuntimeError):
    """The bundle cannot be built from this installation."""


def wheel_server_root() -> Path:
    """``.../site-packages/pytriton/tritonserver`` of the installed ``nvidia-pytriton``."""
    spec = find_spec("pytriton")
    for location in (spec.submodule_search_locations or []) if spec else []:
        root = Path(location) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return root
    raise BundleError("nvidia-pytriton is not installed here (pip install '.[server]')")


def needed(path: Path) -> list[str]:
    """The ``DT_NEEDED`` sonames of an ELF file."""
    text = subprocess.run(
        ["readelf", "-d", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text)


def closure(roots: list[Path], libs: Path) -> tuple[list[str], list[str]]:
    """Sonames of ``libs`` that ``roots`` load (transitively), and those found nowhere there."""
    bundled: list[str] = []
    system: set[str] = set()
    pending = list(roots)
    while pending:
        for soname in needed(pending.pop()):
            if (libs / soname).is_file():
                if soname not in bundled:
                    bundled.append(soname)
                    pending.append(libs / soname)
            else:
                system.add(soname)
    return sorted(bundled), sorted(system)


def find_libpython(version: str) -> Path | None:
    """A shared ``libpython<version>`` on this machine (PATH or pyenv), if any."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p / "bin" / "python") for p in sorted(pyenv.glob(version + ".*"))]
    query = (
        "import os, sysconfig as s; print(os.path.join(s.get_config_var('LIBDIR') or '',"
        " s.get_config_var('INSTSONAME') or ''))"
    )
    for python in filter(None, candidates):
        try:
            found = subprocess.run(
                [python, "-c", query], check=True, capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if found and Path(found).is_file() and ".so" in found:
            return Path(found)
    return None


def copy_server(root: Path, dest: Path, stubs: list[str]) -> dict:
    """The trimmed server tree under ``dest`` (wheel layout); returns the manifest part."""
    libs = root.parent.parent / "nvidia_pytriton.libs"
    target = dest / "pytriton" / "tritonserver"
    files = ["bin/tritonserver", "backends/python/libtriton_python.so"]
    files += ["backends/python/triton_python_backend_utils.py"]
    for version in stubs:
        stub = f"python_backend_stubs/{version}/{STUB}"
        if not (root / stub).is_file():
            raise BundleError(f"the wheel has no Python backend stub for Python {version}")
        files.append(stub)
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target / name)
    elf_roots = [root / name for name in files if not name.endswith(".py")]
    bundled, system = closure(elf_roots, libs)
    (dest / "nvidia_pytriton.libs").mkdir(parents=True, exist_ok=True)
    for soname in bundled:
        shutil.copy2(libs / soname, dest / "nvidia_pytriton.libs" / soname)
    return {"files": files, "libraries": bundled, "system_libraries": system}


def install_site(dest: Path, python_version: str) -> list[str]:
    """pip-install the GPU machine's missing packages for ``python_version`` into ``dest``."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target"]
    command += [str(dest), "--python-version", python_version, "--implementation", "cp"]
    command += ["--only-binary=:all:", *[f"--platform={p}" for p in PLATFORMS], *SITE_PACKAGES]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BundleError(f"pip could not fetch the site packages:\n{done.stderr[-3000:]}")
    for pruned in PRUNED_DIRS:
        for path in sorted(dest.rglob(pruned), reverse=True):
            if path.is_dir() and path.parent.name != "site":
                shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(dest / "bin", ignore_errors=True)
    return sorted(p.name.split("-")[0] for p in dest.glob("*.dist-info"))


def add_libpython(dest: Path, version: str) -> str | None:
    """A stripped copy of ``libpython<version>`` under ``dest`` (fallback for the stub)."""
    source = find_libpython(version)
    if source is None:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    copy = dest / source.name
    shutil.copy2(source, copy)
    subprocess.run(["strip", "--strip-debug", str(copy)], check=False, capture_output=True)
    return str(source)


def pack(staging: Path, archive: Path) -> None:
    """``tar`` + multi-threaded ``xz`` of ``staging``'s contents into ``archive``."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    env = {**os.environ, "XZ_OPT": "-6 -T0"}
    subprocess.run(["tar", "-cJf", str(tmp), "-C", str(staging), "."], check=True, env=env)
    os.replace(tmp, archive)


def working_tree_bytes(repo: Path = REPO_ROOT) -> int:
    """Bytes a device run carries besides ``carry``: tracked and untracked, unignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    paths = (repo / os.fsdecode(name) for name in listed if name)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def build(out: Path, stubs: list[str], site: bool, python_version: str) -> dict:
    """Build ``out/bundle.tar.xz``; returns the manifest (also written as ``out/MANIFEST.json``)."""
    import importlib.metadata

    started = time.perf_counter()
    root = wheel_server_root()
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        staging = Path(tmp)
        manifest: dict = {
            "nvidia_pytriton": importlib.metadata.version("nvidia-pytriton"),
            "stubs": stubs,
            "python_version": python_version,
            "server": copy_server(root, staging / "server", stubs),
            "site": install_site(staging / "site", python_version) if site else [],
            "libpython": add_libpython(staging / "libpython", python_version),
        }
        (staging / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
        manifest["unpacked_bytes"] = sum(
            p.stat().st_size for p in staging.rglob("*") if p.is_file()
        )
        pack(staging, out / ARCHIVE)
    manifest["archive_bytes"] = (out / ARCHIVE).stat().st_size
    manifest["working_tree_bytes"] = working_tree_bytes()
    manifest["carry_bytes"] = manifest["archive_bytes"] + manifest["working_tree_bytes"]
    manifest["fits"] = manifest["carry_bytes"] <= CARRY_LIMIT
    manifest["build_s"] = round(time.perf_counter() - started, 1)
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def carry_list(out: Path) -> list[str]:
    """The ``carry`` entries for the device run (paths relative to the repository)."""
    try:
        return [str(out.resolve().relative_to(REPO_ROOT))]
    except ValueError:
        return [str(out)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--stub", action="append", help="stub Python versions (3.12)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    parser.add_argument("--no-site", action="store_true", help="no pip packages (offline)")
    args = parser.parse_args(argv)
    try:
        manifest = build(
            args.out, args.stub or [args.python_version], not args.no_site, args.python_version
        )
    except (BundleError, subprocess.CalledProcessError) as error:
        print(f"gpu_bundle: {error}", file=sys.stderr)
        return 1
    mib = 1 << 20
    print(
        f"{args.out / ARCHIVE}: {manifest['archive_bytes'] / mib:.1f} MiB packed "
        f"({manifest['unpacked_bytes'] / mib:.0f} MiB unpacked, "
        f"{len(manifest['server']['libraries'])} libraries); with the working tree "
        f"{manifest['carry_bytes'] / mib:.1f} MiB of {CARRY_LIMIT // mib} MiB"
    )
    print("carry: " + json.dumps(carry_list(args.out)))
    print("command: bash bench/gpu_check.sh")
    if not manifest["fits"]:
        print("gpu_bundle: the carry does not fit the limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
