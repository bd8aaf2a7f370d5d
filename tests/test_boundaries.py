"""The inference side imports without torch; the README's commands are the ones CI runs."""

from pathlib import Path

from tests.conftest import run_without_torch

ROOT = Path(__file__).resolve().parent.parent

# Modules a hosted demo runs on onnxruntime alone; each must import with torch unimportable.
TORCH_FREE = ["core.config", "core.checks", "core.limits", "core.cli", "core.tokenizer", "core.data", "core.files",
              "core.catalog", "core.runtime", "core.sampling", "core.generate", "core.scaling", "core.explain",
              "core.positions", "core.trace", "core.metrics", "core.compare", "core.jobs", "core.interpret", "core.preferences",
              "core.glance", "core.moe", "core.mlm", "core.encdec", "core.verify"]

def test_the_blocker_really_blocks():
    res = run_without_torch("import torch")
    assert res.returncode != 0 and "torch is blocked" in res.stderr


def test_inference_side_imports_without_torch():
    code = "\n".join(f"import {m}" for m in TORCH_FREE) + "\nassert 'torch' not in sys.modules\nprint('ok')"
    res = run_without_torch(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_the_train_page_says_training_needs_torch_without_importing_it():
    code = ("from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({str(ROOT / 'streamlit_app.py')!r}, default_timeout=60).run()\n"
            "at.switch_page('playground/train.py')\nat.run()\n"
            "assert not at.exception, at.exception\n"
            "assert any('Training needs torch' in i.value for i in at.info), [i.value for i in at.info]\n"
            "assert 'torch' not in sys.modules\nprint('ok')")
    res = run_without_torch(code.replace("import sys", ""), timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_home_page_renders_without_torch():
    code = ("from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({str(ROOT / 'streamlit_app.py')!r}, default_timeout=60).run()\n"
            "assert not at.exception, at.exception\n"
            "assert at.title[0].value == 'LLM Playground'\n"
            "assert 'torch' not in sys.modules\nprint('ok')")
    res = run_without_torch(code)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme


def pins(name: str) -> dict[str, str]:
    """A requirements file's pins, name -> version (tests/test_deploy.py checks a deploy recipe's by it)."""
    lines = (ROOT / name).read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_the_hosted_requirements_have_no_torch_and_the_same_pins():
    hosted, full = pins("requirements-hosted.txt"), pins("requirements.txt")
    assert not {"torch", "rustbpe", "safetensors", "onnxscript"} & set(hosted)
    assert all(full[name] == version for name, version in hosted.items())
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "requirements-hosted.txt" in dockerfile and "LLM_PLAYGROUND_HOSTED=1" in dockerfile
