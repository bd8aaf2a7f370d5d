"""The deploy recipes ship: the Docker image (deploy/Dockerfile, its context filtered by the root
.dockerignore) and Streamlit Community Cloud (deploy/streamlit-cloud/).

Where a Docker daemon answers, the image is built and must start healthy with a read-only filesystem.
Everywhere, the recipes' parts are checked on their own: what the build context sends (Docker's ignore
rules, simulated), the Dockerfile's COPY sources, fits check, health check and user, the Community Cloud
requirements (through pip itself) and its entrypoint, started in hosted mode."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import BLOCK_TORCH
from tests.test_boundaries import pins

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CLOUD = ROOT / "deploy" / "streamlit-cloud"
CLOUD_APP = CLOUD / "streamlit_app.py"


# ---------------------------------------------------------------------------------------------------
# Docker's .dockerignore rules (moby/patternmatcher, as BuildKit applies them): lines starting with # are
# comments; each pattern is trimmed and path-cleaned, a leading / dropped; * and ? never cross a /, **
# crosses any number of folders; a pattern that matches a folder covers everything in it; the last
# matching pattern decides, ! marking an exception; an excluded folder is walked only when an exception
# names something inside it.

def _regex(pattern: str) -> re.Pattern:
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch in "[]":
            out += ch
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


class DockerIgnore:
    def __init__(self, text: str):
        self.rules: list[tuple[re.Pattern, bool, str]] = []     # (regex, is an exception, cleaned pattern)
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            pattern = line.strip()
            exception = pattern.startswith("!")
            pattern = os.path.normpath(pattern.removeprefix("!").strip()).lstrip("/")
            self.rules.append((_regex(pattern), exception, pattern))

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]    # the path and its parents
        out = False
        for regex, exception, _ in self.rules:
            if any(regex.match(c) for c in candidates):
                out = not exception
        return out

    def _walk_into(self, rel_dir: str) -> bool:
        """Whether an exception may let in something inside this excluded folder (one with a wildcard may)."""
        return any(exc and ((pat + "/").startswith(rel_dir + "/") or re.search(r"[*?\[\\]", pat))
                   for _, exc, pat in self.rules)

    def sent(self, root: Path) -> set[str]:
        """The files under `root` that the build context carries, relative, with / separators (a link is
        sent as a link, never followed)."""
        out = set()
        for here, dirs, files in os.walk(root):
            prefix = "" if Path(here) == root else Path(here).relative_to(root).as_posix() + "/"
            links = [d for d in dirs if os.path.islink(os.path.join(here, d))]
            dirs[:] = [d for d in dirs if d not in links
                       and (not self.excluded(prefix + d) or self._walk_into(prefix + d))]
            out |= {prefix + f for f in files + links if not self.excluded(prefix + f)}
        return out


def dockerfile_steps() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined as Docker joins them."""
    text = re.sub(r"\\\n", "", DOCKERFILE.read_text())
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def copy_sources() -> list[str]:
    """The build-context paths the Dockerfile's COPY steps read (not those of COPY --from another stage)."""
    out = []
    for word, rest in dockerfile_steps():
        if word == "COPY" and not rest.startswith("--from"):
            out += [s.rstrip("/") for s in rest.split()[:-1] if not s.startswith("--")]
    return out


def is_copied(rel: str) -> bool:
    return any(rel == src or rel.startswith(src + "/") for src in copy_sources())


def tracked(*paths: str) -> set[str]:
    res = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"not a git checkout: {res.stderr.strip()}")
    return set(filter(None, res.stdout.split("\0")))


def top_folders(files: set[str], under: str) -> set[str]:
    return {f.split("/")[1] for f in files if f.startswith(under + "/") and f.count("/") >= 2}


# ---------------------------------------------------------------------------------------------------
# The build context

def test_the_ignore_matcher_follows_dockers_rules():
    ig = DockerIgnore("# comment\n*\n!keep/\n!/docs/a?.md\n**/__pycache__\n!keep/x/__pycache__\n")
    assert ig.excluded("anything") and ig.excluded("deep/down/file")       # a folder's rule covers its files
    assert not ig.excluded("keep/file") and not ig.excluded("keep/sub/file")
    assert not ig.excluded("docs/ab.md") and ig.excluded("docs/abc.md") and ig.excluded("docs/a/.md")
    assert ig.excluded("keep/__pycache__/m.pyc")                           # the later rule wins...
    assert not ig.excluded("keep/x/__pycache__/m.pyc")                     # ...and a later exception again
    assert DockerIgnore("*.md\n").excluded("a.md") and not DockerIgnore("*.md\n").excluded("d/a.md")
    assert DockerIgnore("**/*.md\n").excluded("d/e/a.md") and DockerIgnore("**/*.md\n").excluded("a.md")
    assert not DockerIgnore("# *\n").excluded("x") and DockerIgnore(" # x\n").excluded("# x")


def test_the_context_carries_exactly_what_the_image_copies_and_only_the_committed_models(tmp_path):
    """A checkout of the committed files plus what a user's machine gathers (a venv, runs, artifacts, a
    pretrained import, a stray sweep, secrets, caches): the context sends the committed files that the
    Dockerfile copies, every committed model and sweep file among them, and nothing else."""
    committed = tracked()
    assert committed, "git ls-files found nothing"
    planted = [".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py", "runs/mine/run.json",
               "runs/sweeps/mine/records/a.json", "artifacts/shot.png", ".git/HEAD", ".hypothesis/examples/x",
               ".ruff_cache/x", ".pytest_cache/x", "exported/gpt2/model.onnx", "exported/gpt2/card.json",
               "exported/notes.txt", "sweeps/mine.json", "sweeps/tinyshakespeare-byte.fits.json.3a.tmp",
               ".streamlit/secrets.toml", "core/__pycache__/catalog.cpython-311.pyc", "playground/x.pyc", ".env",
               "deploy/streamlit-cloud/secrets.toml"]
    for rel in sorted(committed) + planted:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    sent = DockerIgnore((ROOT / ".dockerignore").read_text()).sent(tmp_path)
    assert not set(planted) & sent, sorted(set(planted) & sent)
    assert sent == {f for f in committed if is_copied(f)}
    models, sweeps = tracked("exported/"), tracked("sweeps/")
    assert models and sweeps and models | sweeps <= sent


def test_this_tree_sends_what_the_dockerfile_copies_and_no_other_model():
    """On the working tree as it is (whatever this machine has imported or trained): every COPY source is
    in the context, the model folders sent are exactly the committed ones, and the big folders stay out."""
    sent = DockerIgnore((ROOT / ".dockerignore").read_text()).sent(ROOT)
    for src in copy_sources():
        assert any(f == src or f.startswith(src + "/") for f in sent), f"COPY {src}: not in the build context"
    assert top_folders(sent, "exported") == top_folders(tracked("exported/"), "exported")
    assert {f for f in sent if f.startswith("sweeps/")} == tracked("sweeps/")
    assert not [f for f in sent if f.split("/")[0] in {".venv", "runs", "artifacts", ".git", "tests", "bench"}]


# ---------------------------------------------------------------------------------------------------
# The Dockerfile

def test_the_dockerfile_runs_hosted_as_a_user_with_a_health_check():
    steps = dockerfile_steps()
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/_stcore/health" in health[0] and "curl" not in health[0]
    assert steps[0][0] == "FROM" and "slim" in steps[0][1]           # the check must run on what slim has
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "LLM_PLAYGROUND_HOSTED=1" in env and "requirements-hosted.txt" in DOCKERFILE.read_text()


def healthcheck(port: int) -> subprocess.CompletedProcess:
    """The Dockerfile's HEALTHCHECK command, run here against a server on `port`."""
    cmd = next(rest for word, rest in dockerfile_steps() if word == "HEALTHCHECK").split(" CMD ", 1)[1]
    assert cmd.startswith("python -c ") and ":8501/" in cmd
    code = cmd.removeprefix("python -c ").strip().strip('"').replace(":8501/", f":{port}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def fits_check(env: dict) -> subprocess.CompletedProcess:
    """The Dockerfile's build-time check of the stored scaling fits, run here (python is this venv's)."""
    cmd = next(rest for word, rest in dockerfile_steps() if word == "RUN" and "core.scaling" in rest)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env, "PATH": path})


def test_the_build_verifies_the_committed_fits_and_fails_on_stale_ones(tmp_path):
    """The committed sweep's fits are committed: the build checks them rather than refitting. It passes on
    the committed files (as the image has them: no runs/), and fails, naming the command that refits, when
    the records have changed since or when no sweep reaches the image."""
    no_runs = tmp_path / "runs"
    res = fits_check({"LLM_PLAYGROUND_RUNS": str(no_runs)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "current" in res.stdout

    stale = tmp_path / "sweeps"
    stale.mkdir()
    for f in tracked("sweeps/"):
        shutil.copy(ROOT / f, stale / Path(f).name)
    records = next(p for p in stale.glob("*.json") if not p.name.endswith(".fits.json"))
    records.write_text(re.sub(r'("val_loss": )(\d)', r"\g<1>9", records.read_text(), count=1))
    res = fits_check({"LLM_PLAYGROUND_RUNS": str(no_runs), "LLM_PLAYGROUND_SWEEPS": str(stale)})
    assert res.returncode == 1 and "stale" in res.stdout and "python -m core.scaling fit" in res.stdout, res.stdout

    res = fits_check({"LLM_PLAYGROUND_RUNS": str(no_runs), "LLM_PLAYGROUND_SWEEPS": str(tmp_path / "none")})
    assert res.returncode == 1


# ---------------------------------------------------------------------------------------------------
# Streamlit Community Cloud

def test_community_cloud_installs_the_hosted_pins_and_no_torch(tmp_path):
    """Community Cloud takes the first dependency file beside the entrypoint (uv.lock, Pipfile,
    environment.yml, requirements.txt, pyproject.toml, in that order) before the root's: ours is the
    requirements.txt there. pip itself (Community Cloud's fallback; uv reads a nested -r the same way, relative
    to the file) reads it from another folder, offline, and must find exactly the hosted pins."""
    found = [n for n in ("uv.lock", "Pipfile", "environment.yml", "requirements.txt", "pyproject.toml")
             if (CLOUD / n).exists()]
    assert found == ["requirements.txt"]
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--no-index",
                          "--no-deps", "--disable-pip-version-check", "-r", str(CLOUD / "requirements.txt")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    wanted = dict(re.findall(r"Requirement already satisfied: ([A-Za-z0-9_.-]+)==(\S+)", res.stdout))
    assert wanted == pins("requirements-hosted.txt")
    assert "torch" not in wanted


def test_community_cloud_entrypoint_runs_the_app_in_hosted_mode_without_torch():
    """The entrypoint as Community Cloud runs it: from the repository root, with only the entrypoint's
    folder on the path (as `streamlit run` puts it) and nothing in the environment. Hosted mode is on,
    torch is never imported, and pages named relative to the entrypoint (the Learn page links to others)
    resolve to the repository's own."""
    assert (CLOUD / "playground").resolve() == ROOT / "playground"
    code = ("import os, tiktoken\n"
            "def offline(name):\n    raise ConnectionError('offline')\n"
            "tiktoken.get_encoding = offline\n"
            "os.environ.pop('LLM_PLAYGROUND_HOSTED', None)\n"
            "from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({str(CLOUD_APP)!r}, default_timeout=120).run()\n"
            "assert not at.exception, at.exception\n"
            "assert at.title[0].value == 'LLM Playground'\n"
            "import playground.shared\n"
            "assert playground.shared.HOSTED and os.environ['LLM_PLAYGROUND_HOSTED'] == '1'\n"
            "for page in ('playground/learn.py', 'playground/train.py'):\n"
            "    at.switch_page(page)\n    at.run()\n    assert not at.exception, (page, at.exception)\n"
            "assert any('Training needs torch' in i.value for i in at.info)\n"
            "assert 'torch' not in sys.modules\nprint('ok')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -P: the current folder (the repository root) is not put on the path; the entrypoint must do it
    res = subprocess.run([sys.executable, "-P", "-c", BLOCK_TORCH.format(root=str(CLOUD)) + code], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


# Records every attempt to write a file or change a folder outside the temporary folder, whether or not
# it would fail and whether or not the app would swallow the error.
WRITE_AUDIT = """
import os, sys, tempfile
WRITES = []
_tmp = os.path.realpath(tempfile.gettempdir())
def _audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1] or "", args[2] or 0
        if not (set(str(mode)) & set("wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
            return
    elif event not in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.chmod",
                       "os.truncate", "shutil.rmtree", "shutil.move", "shutil.copyfile"):
        return
    path = os.path.realpath(os.fsdecode(args[0])) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
    if path and not path.startswith((_tmp + os.sep, "/dev/")):
        WRITES.append((event, path))
sys.addaudithook(_audit)
"""


# `streamlit run ENTRYPOINT` (its console script, with -P: only the entrypoint's folder on the path, as there),
# with every write outside the temporary folder recorded and printed when the server exits
SERVE = """
import atexit, json
atexit.register(lambda: print("WRITES " + json.dumps(WRITES), flush=True))
sys.argv = ["streamlit", "run", {app!r}, "--server.headless", "true", "--server.address", "127.0.0.1",
            "--server.port", "{port}"]
from streamlit.web.cli import main
main()
"""


@pytest.mark.slow
def test_community_cloud_entrypoint_serves_healthy_as_the_health_check_sees_it(tmp_path):
    """The Community Cloud entrypoint served from the repository root as Community Cloud starts it (its
    HOME here unwritable, as the image's nobody has it): the health URL answers (a generous ceiling: a
    loaded machine is slow, not broken), the Dockerfile's HEALTHCHECK says healthy, real sessions render
    pages in hosted mode (the Train page offers no local file), the server writes nothing outside the
    temporary folder, and once it is gone the same check says unhealthy."""
    from tests.wsclient import Session, free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_PLAYGROUND_HOSTED", "PYTHONPATH")}
    env.update(HOME="/nonexistent", PYTHONDONTWRITEBYTECODE="1")
    serve = WRITE_AUDIT + SERVE.format(app=str(CLOUD_APP.relative_to(ROOT)), port=port)
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-P", "-c", serve], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while healthcheck(port).returncode != 0:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no answer on /_stcore/health in 300 s"
            time.sleep(1)

        async def visit():
            s = Session(port)
            await s.connect()
            try:
                return [await s.rerun(page, timeout=300) for page in ("", "learn", "scaling", "train")]
            finally:
                await s.close()

        runs = asyncio.run(visit())
        for run in runs:
            assert run.status == "FINISHED_SUCCESSFULLY" and not run.errors, (run.status, run.errors)
        sources = [list(e.radio.options) for kind, e, _ in runs[-1].elements if kind == "radio"]
        assert sources and not any("a local file" in o for o in sources[0]), sources
    finally:
        proc.terminate()
        proc.wait(60)
    assert healthcheck(port).returncode != 0
    writes = [line for line in log.read_text().splitlines() if line.startswith("WRITES ")]
    assert writes == ["WRITES []"], writes or log.read_text()[-3000:]


# ---------------------------------------------------------------------------------------------------
# What the image runs: its files, read-only, not root

@pytest.mark.slow
def test_the_images_files_serve_every_page_hosted_without_writing():
    """The files the build context sends, copied as the image lays them out, read-only: every page the app
    wires renders in hosted mode without torch, without an exception or an error, and without one attempt to
    write outside the temporary folder (an audit hook sees each attempt, even one that would fail or that the
    app would swallow, and even as root). So the image's USER nobody needs no writable folder but /tmp.
    (Not run as nobody here: this venv's interpreter may live where nobody cannot read.)"""
    app_pages = re.findall(r'"(playground/[a-z_]+\.py)"', (ROOT / "streamlit_app.py").read_text())
    assert len(app_pages) >= 10
    base = Path(tempfile.mkdtemp(prefix="image-"))
    try:
        app = base / "app"
        for rel in DockerIgnore((ROOT / ".dockerignore").read_text()).sent(ROOT):
            if is_copied(rel):
                (app / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / rel, app / rel)
        for here, dirs, files in os.walk(base):
            os.chmod(here, 0o555)
            for f in files:
                os.chmod(os.path.join(here, f), 0o444)
        code = ("import tiktoken\n"
                "def offline(name):\n    raise ConnectionError('offline')\n"
                "tiktoken.get_encoding = offline\n"
                "from streamlit.testing.v1 import AppTest\n"
                f"for page in {app_pages!r}:\n"
                f"    at = AppTest.from_file({str(app / 'streamlit_app.py')!r}, default_timeout=120).run()\n"
                "    at.switch_page(page)\n    at.run()\n"
                "    assert not at.exception, (page, [e.message for e in at.exception])\n"
                "    assert not at.error, (page, [e.value for e in at.error])\n"
                "assert not WRITES, WRITES\n"
                "assert 'torch' not in sys.modules\nprint('ok')")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PLAYGROUND_") and k != "PYTHONPATH"}
        env.update(LLM_PLAYGROUND_HOSTED="1", HOME="/nonexistent", PYTHONDONTWRITEBYTECODE="1",
                   STREAMLIT_CLIENT_SHOW_ERROR_DETAILS="full")     # a failure's message, not the redacted one
        res = subprocess.run([sys.executable, "-c", WRITE_AUDIT + BLOCK_TORCH.format(root=str(app)) + code],
                             cwd=app, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
    finally:
        for here, dirs, files in os.walk(base):
            os.chmod(here, 0o755)
        shutil.rmtree(base)


# ---------------------------------------------------------------------------------------------------
# The image itself, where Docker is here

def docker_answers() -> str | None:
    """Why the image cannot be built here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    res = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        return f"the Docker daemon does not answer: {(res.stderr or res.stdout).strip().splitlines()[-1:]}"
    return None


@pytest.mark.slow
def test_the_image_builds_and_starts_healthy_read_only():
    why = docker_answers()
    if why:
        pytest.skip(f"no image build here: {why}")
    tag = f"llm-playground-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    name = f"llmpg-test-{uuid.uuid4().hex[:12]}"
    try:
        run = subprocess.run(["docker", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", tag],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        deadline, status = time.time() + 600, ""
        while status != "healthy" and time.time() < deadline:
            time.sleep(5)
            status = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", name],
                                    capture_output=True, text=True, timeout=60).stdout.strip()
            assert status in ("starting", "healthy"), (status, subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True).stdout[-3000:])
        assert status == "healthy"
        listing = subprocess.run(["docker", "exec", name, "find", "/app", "-type", "f"],
                                 capture_output=True, text=True, timeout=120).stdout.split()
        files = {p.removeprefix("/app/") for p in listing if "__pycache__" not in p}
        assert top_folders(files, "exported") == top_folders(tracked("exported/"), "exported")
        assert {f for f in files if f.startswith("sweeps/")} == tracked("sweeps/")
        whoami = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True, timeout=60)
        assert whoami.stdout.strip() not in ("", "0")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=300)
