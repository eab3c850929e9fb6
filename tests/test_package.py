"""The wheel: only the package, the requirements of requirements.txt, its extras, and the six commands."""

import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"spml-train": "spml_tf.train:main", "spml-convert": "spml_tf.convert:main",
            "spml-export": "spml_tf.export:main", "spml-predict": "spml_tf.predict:main",
            "spml-report": "spml_tf.report:main", "spml-vl-scores": "spml_tf.vl_scores:main"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    # Built from a copy (the build writes its scratch beside the sources), without build isolation: the
    # environment's setuptools builds it, with no download.
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt",
                 "requirements-report.txt", "requirements-clip.txt"):
        shutil.copy(os.path.join(ROOT, name), source)
    shutil.copytree(os.path.join(ROOT, "spml_tf"), source / "spml_tf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(source)], capture_output=True, text=True)
    if result.returncode != 0 and "No module named" in result.stderr and "setuptools" in result.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = glob.glob(str(out / "spml_tf-*.whl"))
    return zipfile.ZipFile(path)


def _dist_info(wheel, name):
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def _requirements(path):
    lines = (line.split("#")[0].strip() for line in open(os.path.join(ROOT, path)))
    return {re.sub(r"\s", "", line) for line in lines if line}


def test_holds_the_package_only(wheel):
    top = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"spml_tf"}  # no flags.py, train_main.py, tests/ or bench/ in site-packages
    modules = {name for name in wheel.namelist() if name.endswith(".py")}
    here = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "spml_tf", "**", "*.py"), recursive=True)}
    assert modules == here


def test_requires_what_requirements_txt_pins(wheel):
    metadata = _dist_info(wheel, "METADATA")
    runtime = {re.sub(r"\s", "", line.split(":", 1)[1]) for line in metadata.splitlines()
               if line.startswith("Requires-Dist:") and "extra ==" not in line}

    def normalised(requirement):  # "tensorflow<2.22,>=2.21" and "tensorflow>=2.21,<2.22" are one requirement
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", requirement).groups()
        return name.lower(), frozenset(spec.split(","))

    assert {normalised(r) for r in runtime} == {normalised(r) for r in _requirements("requirements.txt")}
    assert "Provides-Extra: dev" in metadata and "Provides-Extra: report" in metadata
    assert "Provides-Extra: clip" in metadata
    for requirement in _requirements("requirements-clip.txt"):
        assert f"Requires-Dist: {requirement}; extra == \"clip\"" in metadata


def test_declares_the_commands(wheel):
    entry_points = _dist_info(wheel, "entry_points.txt")
    declared = dict(re.findall(r"^(spml-[\w-]+) = (\S+)$", entry_points, re.M))
    assert declared == COMMANDS
    for target in COMMANDS.values():  # each names a function that exists
        module, function = target.split(":")
        source = open(os.path.join(ROOT, *module.split(".")) + ".py").read()
        assert f"\ndef {function}(" in source
