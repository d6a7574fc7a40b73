"""The installed package: hybridlens.{study,models,analysis}, never top-level names a user's files shadow."""

import shutil
import subprocess
import sys
from pathlib import Path


def test_user_files_named_like_our_folders_do_not_shadow_hybridlens(tmp_path):
    for name in ("models", "analysis", "study"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('the user\\'s own {name}.py was imported')\n")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hybridlens.models, hybridlens.analysis, hybridlens.study.cli; print(hybridlens.models.build.__module__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hybridlens.models.grid"
    exe = shutil.which("hybridlens") or str(Path(sys.executable).with_name("hybridlens"))
    r = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "study" in r.stdout and "analyze" in r.stdout, r.stderr


def test_no_top_level_models_analysis_or_study_installed(tmp_path):
    for name in ("models", "analysis", "study"):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, name
