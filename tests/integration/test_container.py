"""docs/serving.md's "Container" lines, run as written against an image emulated from the Dockerfile (no
container engine runs here).

The image: what the COPY instructions take from the build context (.dockerignore applied) lands in a folder
standing for WORKDIR; a wheel built there goes alone into a new venv standing for the image's Python. That venv
reaches the project venv's third-party packages through a path in a .pth file (a path, not a site folder: the
.pth files there, the editable install's among them, are not read), so `rotmnist` comes from the wheel only.

The run: the page's bash block runs as the user who pastes it, in a folder holding a small champion store, with
`docker` a shell function that records its arguments and the environment it sees. The Dockerfile's CMD then
starts as `docker run` would start it: as `--user` (else the Dockerfile's USER), in WORKDIR, with docker's
defaults, the image's ENV and the `-e` variables only. Volumes must be mounted at their own path, so the store's
absolute artifact paths hold on both sides and only the path needs emulating. As root, the pasting user is a
uid the image does not know (not its USER), as on most machines. With no network namespace of its own, the
server listens on a free port in place of the EXPOSEd one that `-p` publishes. Of the RUN instructions only the
install is emulated: the others make the image's user and the folder it writes in when nothing is mounted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from rotmnist.config import load_config
from rotmnist.serving.auth import TOKEN_ENV
from tests.support.dockerfile import build_context, instructions
from tests.support.serving import (
    call,
    champion_store,
    drawing,
    free_socket,
    get_json,
    multipart,
    png_bytes,
    stop,
    wait_for,
)
from tests.support.tools import require

pytestmark = pytest.mark.slow  # a store, a wheel, a venv and the real server: under a minute

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "serving.md"
DOCKERFILE = instructions((REPO / "Dockerfile").read_text())
PASTER = (1000, 1000)  # as root: the uid:gid that pastes the page's lines (a machine's usual first user)
# `docker` for the page's block: records each call's arguments and the environment the client sees.
DOCKER_STUB = 'docker() { printf "%s\\0" "$@" > "$RECORD/docker-$1"; env -0 > "$RECORD/docker-$1.env"; }\n'
# Docker's defaults for the container: the python image's PATH and locale; HOME is / for a uid that the
# image's /etc/passwd does not list (`--user "$(id -u)..."`).
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/"}


@dataclasses.dataclass(frozen=True)
class Container:
    """The emulated container: its server's URL, the token it was given, and how its process was started."""

    url: str
    token: str
    store: Path  # the pasting user's repository, mounted at its own path
    bin: Path  # the image's venv's bin/
    env: dict[str, str]
    workdir: Path
    uid: int
    gid: int
    log: Path


def last(keyword: str) -> str:
    """The arguments of the Dockerfile's last `keyword` instruction, the one in force when the container runs."""
    found = [args for key, args in DOCKERFILE if key == keyword]
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def image_env() -> dict[str, str]:
    """The variables of the Dockerfile's ENV instructions (the KEY=value form)."""
    pairs = [pair for key, args in DOCKERFILE if key == "ENV" for pair in shlex.split(args)]
    assert all("=" in pair for pair in pairs), pairs
    return dict(pair.split("=", 1) for pair in pairs)


def as_user(cmd: list, uid: int, gid: int) -> list[str]:
    """`cmd` run as `uid`:`gid` (setpriv); only root can switch, anyone else runs it as itself."""
    cmd = [str(c) for c in cmd]
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd]


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def system_path() -> str:
    """The caller's PATH without the project's venv, as a new shell has it."""
    venv_bin = str(Path(sys.prefix) / "bin")
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)


# ---- the image ----------------------------------------------------------------------------------------


def copy_into(root: Path) -> Path:
    """Copy what the COPY instructions take from the build context into `root` standing for `/`; return WORKDIR."""
    context = build_context()
    workdir = PurePosixPath("/")
    for keyword, args in DOCKERFILE:
        if keyword == "WORKDIR":
            workdir /= args
        if keyword != "COPY":
            continue
        *sources, dest = shlex.split(args)
        target = root / (workdir / dest).relative_to("/")
        for source in sources:
            assert source in context, f"COPY {args}: {source} is not a path of the build context"
            if (REPO / source).is_dir():  # a folder's content goes into the destination
                files = [p for p in context if p.startswith(f"{source}/") and (REPO / p).is_file()]
                pairs = [(REPO / p, target / PurePosixPath(p).relative_to(source)) for p in files]
            else:
                pairs = [(REPO / source, target / source if dest.endswith("/") or len(sources) > 1 else target)]
            for src, dst in pairs:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    return root / workdir.relative_to("/")


def runnable_python(uid: int, gid: int) -> str | None:
    """A Python of the project's version that `uid` can run: the project venv's own, else one on the system's PATH.

    The venv's interpreter may live where only root can reach it (pyenv under /root); then another build of the
    same version stands for the image's, and loads the venv's compiled packages (same ABI).
    """
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    on_path = [Path(folder) / name for folder in system_path().split(os.pathsep)]
    for candidate in [Path(sys.executable).resolve(), *(p for p in on_path if p.is_file())]:
        try:
            if subprocess.run(as_user([candidate, "-c", ""], uid, gid), timeout=60).returncode == 0:
                return str(candidate)
        except PermissionError:  # a folder on the way is closed to `uid`
            continue
    return None


def install_wheel(app: Path, scratch: Path, python: str) -> Path:
    """Build a wheel of `app`, install it alone into a new venv of `python` that reaches the project's packages;
    return the venv's bin/."""
    wheels, venv = scratch / "wheels", scratch / "image" / "venv"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, app])
    [wheel] = wheels.glob("rotmnist-*.whl")
    run([python, "-m", "venv", "--without-pip", venv])
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel])
    site = run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout
    (Path(site.strip()) / "project-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv / "bin"


def image_python(app: Path, scratch: Path, uid: int, gid: int) -> Path:
    """The emulated image's Python, which `uid` runs: the wheel of `app` in a new venv; return the venv's bin/."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = runnable_python(uid, gid)
    require(python, f"a Python {version} that uid {uid} can run (the venv's is out of its reach)", f"python{version}")
    site = sysconfig.get_path("purelib")
    # access(2), as the libraries use it (alembic finds MLflow's migrations so): it leaves the capability out
    if subprocess.run(as_user(["test", "-r", site], uid, gid)).returncode != 0:
        # where the checkout lies decides this, not a package .ci/run could install: a skip, also in CI
        pytest.skip(f"uid {uid} cannot read the project's packages in {site}: clone the repository where others can")
    return install_wheel(app, scratch, python)


# ---- the page's lines ---------------------------------------------------------------------------------


def documented_block() -> str:
    """The first ```bash block of the page's "Container" section."""
    text = PAGE.read_text()
    heading = re.search(r"^## Container[ \t]*$", text, flags=re.MULTILINE)
    assert heading, f"{PAGE.name} has no 'Container' section"
    block = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL).search(text, heading.end())
    assert block, f"{PAGE.name} shows no ```bash block under 'Container'"
    return block.group(1)


def paste(store: Path, record: Path, uid: int, gid: int) -> dict[str, list[str]]:
    """Run the page's block in bash as `uid`, in `store`; return each `docker` call's arguments by subcommand
    (`build`, `run`) and the environment each call's client saw (`build.env`, `run.env`)."""
    shell_env = {"PATH": system_path(), "HOME": str(store), "LANG": "C.UTF-8", "RECORD": str(record)}
    script = f"set -e\n{DOCKER_STUB}{documented_block()}"
    proc = subprocess.run(
        as_user(["bash", "-c", script], uid, gid),
        cwd=store,
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"the page's block failed:\n{proc.stdout}\n{proc.stderr}"
    calls = {path.name.removeprefix("docker-"): path.read_text().split("\0")[:-1] for path in record.iterdir()}
    assert {"build", "run", "run.env"} <= set(calls), "the page's block makes no `docker build` and `docker run`"
    return calls


def docker_run(calls: dict[str, list[str]], store: Path) -> argparse.Namespace:
    """The options of the page's `docker run`, checked against what the emulation stands for."""
    parser = argparse.ArgumentParser(prog="docker run", add_help=False)
    parser.add_argument("--rm", action="store_true")
    parser.add_argument("-p", "--publish", action="append", default=[])
    parser.add_argument("-u", "--user")
    parser.add_argument("-v", "--volume", action="append", default=[])
    parser.add_argument("-e", "--env", action="append", default=[])
    parser.add_argument("image")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options, unknown = parser.parse_known_args(calls["run"][1:])
    assert not unknown, f"docker run options the emulation does not know: {unknown}"
    build = calls["build"]
    assert build[-1] == "." and build[build.index("-t") + 1] == options.image, (build, options.image)
    assert options.command == [], "the page replaces the image's CMD"
    mounts = [volume.split(":")[:2] for volume in options.volume]
    assert all(src == dst for src, dst in mounts), mounts  # at its own path: the same paths on both sides
    assert any(store.is_relative_to(src) for src, _ in mounts), f"the store {store} is not mounted: {mounts}"
    assert [p.split(":")[-1] for p in options.publish] == last("EXPOSE").split(), options.publish
    return options


def container_env(options: argparse.Namespace, client_env: list[str], bin_dir: Path) -> dict[str, str]:
    """What the container's process sees: docker's defaults, the image's ENV and the `-e` variables."""
    client = dict(item.split("=", 1) for item in client_env)
    env = BASE_ENV | {"PATH": f"{bin_dir}:{BASE_ENV['PATH']}"} | image_env()
    for item in options.env:
        name, has_value, value = item.partition("=")
        if has_value:
            env[name] = value
        elif name in client:  # `-e NAME`: the client's value, none when it has none
            env[name] = client[name]
    return env


def container_user(options: argparse.Namespace) -> tuple[int, int]:
    """`--user uid:gid`, else the Dockerfile's USER with the group of the same number that useradd made."""
    if options.user:
        uid, _, gid = options.user.partition(":")
        return int(uid), int(gid or uid)
    uid = int(last("USER").partition(":")[0])
    return uid, uid


# ---- the run ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def started(box: Container) -> Iterator[str]:
    """Run the Dockerfile's CMD in the emulated container; yield its URL once /health answers."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    [command, *args] = json.loads(last("CMD"))  # the exec form: a JSON list
    executable = shutil.which(command, path=box.env["PATH"])
    assert executable and Path(executable).parent == box.bin, executable
    with open(box.log, "w") as log:
        proc = subprocess.Popen(
            as_user([executable, *args, "--port", str(port)], box.uid, box.gid),
            cwd=box.workdir,
            env=box.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            umask=0o022,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, f"the container's command exited ({proc.returncode}):\n{box.log.read_text()}"
        return get_json(f"{url}/health")[0] == 200

    try:
        wait_for(healthy, timeout=120)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder in the system's temporary folder that other uids can reach (pytest's are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="rotmnist-container-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def container(scratch: Path, empty_store: Path) -> Iterator[Container]:
    """The image's command, started by the page's lines against a champion store; yields once /health answers."""
    paster = PASTER if os.geteuid() == 0 else (os.getuid(), os.getgid())
    app = copy_into(scratch / "image")
    store, record = scratch / "repository", scratch / "record"
    store.mkdir()
    record.mkdir()
    with champion_store(store, empty_store, load_config(app / "params.yaml").monitor.model_name):
        for path in (store, *store.rglob("*"), record):  # the repository and the shell's records are the user's
            os.chown(path, *paster)
        calls = paste(store, record, *paster)
        options = docker_run(calls, store)
        uid, gid = container_user(options)
        bin_dir = image_python(app, scratch, uid, gid)
        env = container_env(options, calls["run.env"], bin_dir)
        box = Container("", env.get(TOKEN_ENV, ""), store, bin_dir, env, app, uid, gid, scratch / "serve.log")
        with started(box) as url:
            yield dataclasses.replace(box, url=url)


def test_the_package_comes_from_the_wheel_not_from_the_checkout(container: Container):
    probe = "import json, sys, rotmnist; print(json.dumps([rotmnist.__file__, sys.path]))"
    proc = subprocess.run(
        as_user([container.bin / "python", "-c", probe], container.uid, container.gid),
        cwd=container.workdir,
        env=container.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    module, path = json.loads(proc.stdout)
    assert Path(module).is_relative_to(container.bin.parent / "lib") and "site-packages" in Path(module).parts
    assert not any(Path(p).is_relative_to(REPO / "src") for p in path if p), path  # no editable install's path


def test_the_page_health_and_score_answer(container: Container):
    status, health = get_json(f"{container.url}/health")
    assert status == 200 and health["status"] == "ok", health
    status, page = call(f"{container.url}/")
    assert status == 200 and b'<canvas id="pad"' in page
    body, content_type = multipart([("file", "seven.png", png_bytes(drawing(7)))])
    status, raw = call(f"{container.url}/score", "POST", body, {"Content-Type": content_type})
    assert status == 200, raw
    [prediction] = json.loads(raw)["predictions"]
    assert prediction["digit"] == 7 and prediction["name"] == "seven.png"


def test_the_token_from_the_environment_guards_reload(container: Container):
    assert call(f"{container.url}/reload", "POST")[0] == 401
    assert call(f"{container.url}/reload", "POST", b"", {"Authorization": f"Bearer {container.token}"})[0] == 200


def test_the_request_log_lands_in_the_mounted_repository_as_the_user(container: Container):
    call(f"{container.url}/score", "POST", png_bytes(drawing(3)), {"Content-Type": "image/png"})
    log = container.store / "serving" / "requests.db"

    def rows() -> int:
        try:
            with contextlib.closing(sqlite3.connect(f"{log.as_uri()}?mode=ro", uri=True)) as db:
                return db.execute("SELECT count(*) FROM request_log").fetchone()[0]
        except sqlite3.OperationalError:  # the file or its table is not there yet
            return 0

    wait_for(lambda: rows() > 0, timeout=30)
    assert (log.stat().st_uid, log.stat().st_gid) == (container.uid, container.gid)
