"""The documentation against the project: every command, make target, params key, module and layer the
README and docs/ name exists, and `mkdocs build --strict` renders the site offline."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotmnist.cli import COMMANDS, STAGES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "rotmnist"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
# The docs cite params keys as `section.key`; every section of params.yaml is checked, these at least.
SECTIONS = ("download", "augment", "split", "tune", "train", "monitor", "predict", "serve", "compare", "curriculum")
SECTIONS += ("mlflow", "model")
KEY = rf"(?:{'|'.join(sorted(set(SECTIONS) | set(PARAMS), key=len, reverse=True))})(?:\.[A-Za-z_]\w*)+"
# A code span that starts with a key: `train.device: auto`, `tune.n_trials=16`, `serve.port` (not `mlflow.pyfunc(...)`).
SPAN_KEY = re.compile(rf"^({KEY})(?=$|[\s:=])")
# An override anywhere in code: dvc exp run -S train.epochs=12, -S 'tune.space.cnn.kernel=[3]'.
SET_KEY = re.compile(rf"-S[ \t]+['\"]?({KEY})=")
# `split.py`, `metrics/train.json`, `mlflow.db`: file names, not keys.
FILE_SUFFIXES = {"py", "json", "csv", "png", "md", "yaml", "yml", "lock", "html", "npy", "npz", "pt", "pt2", "log"}
FILE_SUFFIXES |= {"db", "txt", "toml", "pth"}
# `make <args>` and `rotmnist <args>` in code, up to a shell separator or a comment.
ARGS = r"((?:[ \t]+[^\s;&|()#`]+)*)"
MAKE_CALL = re.compile(rf"(?:^|(?<=[\s;&|(]))make{ARGS}", re.MULTILINE)
CLI_CALL = re.compile(rf"(?:^|(?<=[\s;&|(]))rotmnist{ARGS}", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
SHELL_COMMENT = re.compile(r"(?:^|(?<=\s))#.*$", re.MULTILINE)


def code_of(text: str) -> tuple[list[str], list[str]]:
    """(inline code spans, fenced code blocks) of a markdown text."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    spans = re.findall(r"`([^`\n]+(?:\n[^`\n]+)*)`", prose)  # a span may wrap, never across a blank line
    return [" ".join(s.split()) for s in spans], blocks


def code_in_pages() -> list[tuple[str, str]]:
    """(page, code) for every span and block of the README and docs/."""
    found = []
    for page in PAGES:
        spans, blocks = code_of(page.read_text())
        found += [(str(page.relative_to(ROOT)), SHELL_COMMENT.sub("", code)) for code in spans + blocks]
    return found


def leading_words(args: str) -> list[str]:
    """The words of a call up to the first `word:` (included, colon dropped): `make postgres: initdb not found`
    and `rotmnist train: ...` are messages naming the target or command, not calls with more arguments."""
    words = []
    for word in args.split():
        words.append(word.rstrip(":"))
        if word.endswith(":"):
            break
    return words


def makefile_targets() -> set[str]:
    """The targets that have a rule in the Makefile (not variables, recipes or `define` bodies)."""
    targets: set[str] = set()
    in_define = False
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("define "):
            in_define = True
        elif line.startswith("endef"):
            in_define = False
        elif not in_define and not line.startswith("\t"):
            rule = re.match(r"([A-Za-z][\w.-]*(?:[ \t]+[A-Za-z][\w.-]*)*)[ \t]*:(?![:=])", line)
            if rule:
                targets.update(rule.group(1).split())
    return targets


def make_targets_mentioned() -> list[tuple[str, str]]:
    mentioned = []
    for page, code in code_in_pages():
        for call in MAKE_CALL.finditer(code):
            words = [w for w in leading_words(call.group(1)) if not w.startswith("-") and "=" not in w]
            mentioned += [(page, w) for w in words]
    return mentioned


def cli_commands_mentioned() -> list[tuple[str, str]]:
    """The subcommand of every `rotmnist ...` in code: the first word that is not an option (`train:` counts)."""
    mentioned = []
    for page, code in code_in_pages():
        for call in CLI_CALL.finditer(code):
            words = leading_words(call.group(1))
            while words and words[0].startswith("-"):
                words = words[2:] if words[0] == "--params" else words[1:]
            if words and re.fullmatch(r"[a-z][\w-]*", words[0]):
                mentioned.append((page, words[0]))
    return mentioned


def params_keys_mentioned() -> list[tuple[str, str]]:
    mentioned = []
    for page, code in code_in_pages():
        keys = [m.group(1) for m in SET_KEY.finditer(code)]
        if "\n" not in code and (span := SPAN_KEY.match(code)):
            keys.append(span.group(1))
        mentioned += [(page, k) for k in keys if k.rsplit(".", 1)[-1] not in FILE_SUFFIXES]
    return mentioned


def has_key(params: dict[str, Any], dotted: str) -> bool:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_the_parsers_read_the_makefile_and_the_docs():
    # Guards against the checks below passing because nothing was found.
    assert {"repro", "test", "setup", "ui", "serve", "docs"} <= makefile_targets()
    assert "PATH" not in makefile_targets() and "try" not in makefile_targets()
    assert {"repro", "test"} <= {t for _, t in make_targets_mentioned()}
    assert {"serve", "predict", "tune"} <= {c for _, c in cli_commands_mentioned()}
    assert len(params_keys_mentioned()) > 30


def test_every_make_target_mentioned_is_in_the_makefile():
    targets = makefile_targets()
    unknown = sorted({(page, t) for page, t in make_targets_mentioned() if t not in targets})
    assert unknown == [], f"`make <target>` with no such Makefile target: {unknown}"


def test_the_readme_lists_every_make_target():
    in_readme = {t for page, t in make_targets_mentioned() if page == "README.md"}
    assert makefile_targets() - in_readme == set()


def test_every_rotmnist_command_mentioned_exists():
    commands = set(STAGES) | set(COMMANDS)
    unknown = sorted({(page, c) for page, c in cli_commands_mentioned() if c not in commands})
    assert unknown == [], f"`rotmnist <command>` that the CLI does not have: {unknown}"


def test_every_params_key_mentioned_is_in_params_yaml():
    assert set(SECTIONS) <= set(PARAMS), "a section the docs check is gone from params.yaml"
    unknown = sorted({(page, k) for page, k in params_keys_mentioned() if not has_key(PARAMS, k)})
    assert unknown == [], f"params keys the docs name that params.yaml lacks: {unknown}"


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for phrase in ("make repro", "make test", "source .venv/bin/activate"):
        assert phrase in text
    links = [link for link in re.findall(r"\]\(([^)\s#]+)", text) if "://" not in link]
    assert links, "the README links into docs/"
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def files(nav: Any) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [f for item in nav for f in files(item)]
        return [f for value in nav.values() for f in files(value)]

    in_nav = files(config["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(in_nav) == on_disk


def package_tree() -> tuple[list[str], list[str]]:
    """(packages as `data/`, modules as `config.py` or `data/mnist.py`) under src/rotmnist, from the files."""
    packages = sorted(f"{p.parent.relative_to(PACKAGE).as_posix()}/" for p in PACKAGE.rglob("__init__.py"))
    modules = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    return [p for p in packages if p != "./"], modules


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section of a markdown text."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no section '## {heading}'"
    return match.group(1)


def test_the_architecture_page_names_every_package_and_module():
    spans, _ = code_of((DOCS / "architecture.md").read_text())
    packages, modules = package_tree()
    assert packages and modules
    assert [name for name in packages + modules if name not in spans] == []
    named = {s for s in spans if re.fullmatch(r"(?:[a-z_]+/)?[a-z_]+\.py", s)}  # `cli.py`, `data/mnist.py`
    assert named - set(modules) == set(), "docs/architecture.md names modules that no longer exist"


def normalise_layer(layer: str) -> str:
    return re.sub(r"\s*([|:])\s*", r" \1 ", layer).strip()


def test_the_architecture_page_states_the_import_linter_layers():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = [
        c
        for c in pyproject["tool"]["importlinter"]["contracts"]
        if c["type"] == "layers" and c.get("containers") == ["rotmnist"]
    ]
    assert len(contracts) == 1, "expected one layers contract over the package in pyproject.toml"
    _, blocks = code_of(section((DOCS / "architecture.md").read_text(), "Layers"))
    assert blocks, "the Layers section of docs/architecture.md needs a fenced block, one layer per line"
    page = [normalise_layer(line) for line in blocks[0].splitlines() if line.strip()]
    assert page == [normalise_layer(layer) for layer in contracts[0]["layers"]]


def api_directives() -> dict[str, list[str]]:
    """{page name: the `::: rotmnist.x` directives on it} for docs/api/."""
    return {
        page.stem: re.findall(r"^::: (rotmnist(?:\.\w+)+)[ \t]*$", page.read_text(), flags=re.MULTILINE)
        for page in sorted((DOCS / "api").glob("*.md"))
    }


def test_every_module_is_on_its_packages_api_page():
    _, modules = package_tree()
    pages = api_directives()
    for module in modules:
        dotted = "rotmnist." + module.removesuffix(".py").replace("/", ".")
        page = module.split("/")[0] if "/" in module else "foundation"
        assert dotted in pages.get(page, []), f"add `::: {dotted}` to docs/api/{page}.md"


def test_no_api_page_names_a_missing_module():
    packages, modules = package_tree()
    existing = {"rotmnist." + m.removesuffix(".py").replace("/", ".") for m in modules}
    existing |= {"rotmnist." + p.rstrip("/").replace("/", ".") for p in packages}
    named = {name for names in api_directives().values() for name in names}
    assert named - existing == set(), "docs/api/ names a module that no longer exists"


@pytest.mark.slow
def test_strict_build_renders_the_site_offline(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    assert "learn_model" in (tmp_path / "api" / "foundation" / "index.html").read_text()
    assert "load_config" in (tmp_path / "api" / "config" / "index.html").read_text()
    assert "generate_dataset" in (tmp_path / "api" / "data" / "index.html").read_text()
    assert "monitor_perf" in (tmp_path / "api" / "learning" / "index.html").read_text()
    assert "load_champion" in (tmp_path / "api" / "tracking" / "index.html").read_text()
    assert "First look" in (tmp_path / "getting-started" / "index.html").read_text()
    pages = list(tmp_path.rglob("*.html"))
    assert len(pages) > 15
    assert [p for p in pages if "fonts.googleapis.com" in p.read_text()] == []


def test_every_test_the_fault_table_names_exists():
    import ast
    import re

    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", (DOCS / "reliability.md").read_text())
    assert len(named) >= 15
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text())
        tests = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in tests, f"docs/reliability.md names {path}::{name}, which does not exist"
