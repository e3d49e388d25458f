"""llama.cpp's own tools (llama-imatrix, llama-quantize, llama-perplexity, llama-tokenize), built once into the cache.

What it installs: nothing into any Python environment. It downloads the PyPI source distribution of
``llama-cpp-python`` (which vendors llama.cpp's whole source tree under ``vendor/llama.cpp``) with
pip, unpacks it under ``$CALIBSCOPE_CACHE/llama.cpp/`` and builds the four tools with the system's
cmake and C++ compiler, CPU only (no CURL, no server, no tests). About 8-13 minutes on 2 cores, once.

``LLAMA_CPP_BIN`` (a folder holding the four executables) skips all of this and uses a build of
your own, e.g. ``LLAMA_CPP_BIN=~/src/llama.cpp/build/bin``. Build with ``python -m bench._llamacpp``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from engine.imatrix import LLAMA_CPP_SDIST, LLAMA_CPP_TOOLS, llama_cpp_bin_dir, llama_cpp_root


def built() -> Path | None:
    """The folder with all three tools, or None when they are not built."""
    folder = llama_cpp_bin_dir()
    return folder if all((folder / tool).is_file() for tool in LLAMA_CPP_TOOLS) else None


def source_tree() -> Path:
    """llama.cpp's source, unpacked from the sdist (downloaded with pip on first use)."""
    tree = llama_cpp_root() / "src"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    downloads = llama_cpp_root() / "download"
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LLAMA_CPP_SDIST,
                    "-d", str(downloads)], check=True)
    archive = next(downloads.glob("llama_cpp_python-*.tar.gz"))
    unpacked = llama_cpp_root() / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    vendored = next(unpacked.glob("llama_cpp_python-*/vendor/llama.cpp"))
    shutil.rmtree(tree, ignore_errors=True)
    vendored.rename(tree)
    shutil.rmtree(unpacked)
    return tree


def build(jobs: int | None = None) -> Path:
    """Build the three tools once; returns the folder holding them."""
    if folder := built():
        return folder
    if "LLAMA_CPP_BIN" in os.environ:
        raise FileNotFoundError(f"LLAMA_CPP_BIN={llama_cpp_bin_dir()} does not hold {', '.join(LLAMA_CPP_TOOLS)}")
    tree, build_dir = source_tree(), llama_cpp_root() / "build"
    subprocess.run(["cmake", "-S", str(tree), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON"], check=True)
    subprocess.run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs or os.cpu_count() or 2),
                    "--target", *LLAMA_CPP_TOOLS], check=True)
    return llama_cpp_bin_dir()


if __name__ == "__main__":
    print(build())
