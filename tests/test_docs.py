"""The documentation (README.md, docs/*.md) agrees with the code it describes: commands, flags,
config names, parameter counts, the code map and the links between the pages."""

import glob
import os
import re
import subprocess
import sys
from functools import cache

import pytest
from ruamel.yaml import YAML

from networks.summary import summarize
from utils.YParams import YParams, load_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "config", "vamoe.yaml")
README = os.path.join(ROOT, "README.md")
CONFIG_DOC = os.path.join(ROOT, "docs", "configuration.md")
MODEL_SIZE_DOC = os.path.join(ROOT, "docs", "model_size.md")
CODE_MAP = os.path.join(ROOT, "docs", "code_map.md")
DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

# Modules run with `python -m` that are not part of this repository.
EXTERNAL_MODULES = {"pytest", "venv", "pip", "torch.distributed.run"}


def read(path):
    with open(path) as f:
        return f.read()


def fenced_blocks(text):
    """Contents of the ``` fenced code blocks, in order, stripped."""
    return [m.group(1).strip() for m in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)]


def section_names():
    with open(CONFIG) as f:
        return list(YAML(typ="safe").load(f))


def test_readme_first_commands():
    blocks = fenced_blocks(read(README))
    assert len(blocks) >= 2, "README.md needs at least two fenced code blocks"
    assert blocks[0] == "bash quickstart.sh"
    assert blocks[1] == ".venv/bin/python -m pytest"


def test_ci_runs_the_readme_test_command():
    lines = [ln.strip() for ln in read(os.path.join(ROOT, ".ci", "run")).splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    assert commands[-1] == fenced_blocks(read(README))[1]


def test_every_full_field_key_is_documented():
    doc = read(CONFIG_DOC)
    keys = list(load_section(CONFIG, "full_field"))
    assert keys, "full_field has no keys"
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"keys of full_field not documented in docs/configuration.md: {missing}"


def test_every_section_is_documented():
    doc = read(CONFIG_DOC)
    missing = [s for s in section_names() if f"`{s}`" not in doc]
    assert not missing, f"config sections not documented in docs/configuration.md: {missing}"


def _module_exists(module):
    base = os.path.join(ROOT, *module.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_python_m_modules_exist(doc):
    modules = set(re.findall(r"python3? -m ([A-Za-z_][\w.]*)", read(doc)))
    bad = sorted(m for m in modules if m not in EXTERNAL_MODULES and not _module_exists(m))
    assert not bad, f"`python -m` modules in {doc} that do not exist: {bad}"


def _repo_basenames():
    names = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") or d == ".ci"]
        run_time = ("data", "exp", "results") if dirpath == ROOT else ()  # git-ignored outputs
        dirnames[:] = [d for d in dirnames if d not in (*run_time, "__pycache__")]
        names.update(filenames)
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_script_paths_exist(doc):
    text = read(doc)
    paths = set(re.findall(r"(?<![\w/.$<-])((?:[\w.-]+/)*[\w-]+\.(?:sh|py))\b", text))
    assert paths, f"no script paths found in {doc}"
    basenames = _repo_basenames()
    bad = []
    for path in sorted(paths):
        if "/" in path:
            ok = any(
                os.path.isfile(os.path.join(base, path)) for base in (ROOT, os.path.dirname(doc))
            )
        else:  # a bare name, e.g. in a table of networks/ modules
            ok = os.path.isfile(os.path.join(ROOT, path)) or path in basenames
        if not ok:
            bad.append(path)
    assert not bad, f"script paths in {doc} that do not exist: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_names_are_sections(doc):
    text = read(doc)
    names = set(re.findall(r"--config[ =]([A-Za-z_]\w*)", text))
    names |= set(re.findall(r"\bCONFIG=([A-Za-z_]\w*)", text))
    names = {n for n in names if not n.isupper()}  # NAME and the like are placeholders
    bad = sorted(names - set(section_names()))
    assert not bad, f"--config / CONFIG= names in {doc} that are not sections: {bad}"


def test_model_size_table_matches_summary():
    """Rows of the model-size table: | `section` | channels | experts | total | trainable |."""
    rows = re.findall(
        r"^\| `(\w+)`[^|]*\| (\d+) \| (\d+) \| ([\d,]+) \| ([^|]+) \|$", read(MODEL_SIZE_DOC), re.M
    )
    sections = {r[0] for r in rows}
    assert {"vamoe", "vamoe_initial", "vamoe_1024", "vamoe_incremental"} <= sections, rows
    for name, channels, experts, total, trainable in rows:
        s = summarize(YParams(CONFIG, name))
        assert int(channels) == s["channels"], name
        assert int(experts) == s["experts"], name
        assert int(total.replace(",", "")) == s["total_params"], name
        trainable = trainable.strip()
        if trainable == "all":
            assert s["trainable_params"] == s["total_params"], name
        else:
            count, percent = re.fullmatch(r"([\d,]+) \(([\d.]+) %\)", trainable).groups()
            assert int(count.replace(",", "")) == s["trainable_params"], name
            assert float(percent) == round(100 * s["trainable_fraction"], 1), name


@cache
def _real_counts():
    """Total and trainable counts of every section, and of the incremental stage at D = 1024."""
    summaries = [summarize(YParams(CONFIG, name)) for name in section_names()]
    summaries.append(summarize(YParams(CONFIG, "vamoe_incremental", ["embed_dim=1024"])))
    return {n for s in summaries for n in (s["total_params"], s["trainable_params"])}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_quoted_counts_match_summary(doc):
    """Every parameter count quoted in prose (e.g. '92,412,812 of 375,675,788') is a real count."""
    quoted = {int(q.replace(",", "")) for q in re.findall(r"\b\d{2,3},\d{3},\d{3}\b", read(doc))}
    bad = sorted(quoted - _real_counts())
    assert not bad, f"counts in {doc} that networks.summary does not produce: {bad}"


def test_readme_quotes_the_incremental_split():
    assert "92,412,812 of 375,675,788" in read(README)


def _text_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") or d == ".ci"]
        dirnames[:] = [d for d in dirnames if d not in ("data", "exp", "results", "__pycache__")]
        for name in filenames:
            if name.endswith((".py", ".md", ".yaml", ".sh", ".toml", ".txt")) or name == "run":
                yield os.path.join(dirpath, name)


def test_docs_referenced_anywhere_exist_and_no_outside_document_is_cited():
    """Every ``docs/<name>.md`` named in code, config or docs exists; no file cites a design
    document that is not in the repository (its name is spelled in two parts here)."""
    outside = "SP" + "EC"
    referenced, citing = set(), []
    for path in _text_files():
        text = read(path)
        referenced |= set(re.findall(r"docs/[\w-]+\.md", text))
        if outside in text:
            citing.append(os.path.relpath(path, ROOT))
    assert "docs/design.md" in referenced
    missing = sorted(r for r in referenced if not os.path.isfile(os.path.join(ROOT, r)))
    assert not missing, f"referenced docs that do not exist: {missing}"
    assert not citing, f"files citing a document outside the repository: {citing}"


def test_recipe_table_shows_the_vamoe_defaults():
    """Rows of the recipe table in docs/configuration.md: | `key` | `vamoe` default | ... |."""
    doc = read(CONFIG_DOC)
    table = doc[doc.index("### The training recipe") :]
    table = table[: table.index("\n\n", table.index("| key |"))]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", table, re.M)
    params = YParams(CONFIG, "vamoe")
    checked = []
    for key, value in rows:
        value = value.strip()
        first = value.split("`")[1] if value.startswith("`") else value.split()[0]
        assert YAML(typ="safe").load(first) == params[key], (key, value)
        checked.append(key)
    assert {"lr", "min_lr", "betas", "weight_decay", "max_epochs", "drop_path"} <= set(checked)


# --------------------------------------------------------------------------------------------------
# Commands shown in the documentation: every --flag exists in the --help of the program it goes to.

# Launchers whose arguments go to a Python entry point, with the flags they take themselves.
LAUNCHERS = {
    "train.sh": ("train.py", ()),
    "test.sh": ("inference.py", ()),
    "quickstart.sh": ("train.py", ("--format",)),
}
INVOCATION = re.compile(
    r"python3? -m (tools\.\w+)"  # a command of tools/
    r"|python3? ((?:benchmarks/)?\w+\.py)\b"  # an entry point or a benchmark
    r"|bash ((?:train|test|quickstart)\.sh)\b"  # a launcher
)


def _command_lines(text):
    """Shell commands of a page: fenced-block lines (comments dropped, continuations joined) and
    inline code spans."""
    commands = []
    for block in fenced_blocks(text):
        lines = [re.sub(r"(^|\s)#.*$", "", ln) for ln in block.replace("\\\n", " ").splitlines()]
        commands += [ln for ln in lines if ln.strip()]
    without_blocks = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    commands += re.findall(r"`([^`\n]+)`", without_blocks)
    return commands


def _shown_flags():
    """{(program, flag): [docs showing it]}; the program is a ``tools.X`` module or a script path."""
    shown = {}
    for doc in DOCS:
        for command in _command_lines(read(doc)):
            for match in INVOCATION.finditer(command):
                module, script, launcher = match.groups()
                if script and not os.path.isfile(os.path.join(ROOT, script)):
                    continue  # test_script_paths_exist reports it
                program, own = LAUNCHERS.get(launcher, (module or script, ()))
                args = re.split(r"&&|;|\||'", command[match.end() :])[0]
                for flag in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", args):
                    if flag not in own:
                        shown.setdefault((program, flag), []).append(os.path.relpath(doc, ROOT))
    return shown


@cache
def _help(program):
    target = ["-m", program] if program.startswith("tools.") else [program]
    run = subprocess.run(
        [sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"{program} --help failed:\n{run.stderr}"
    return run.stdout


def test_commands_are_found_in_the_docs():
    programs = {program for program, _ in _shown_flags()}
    assert {"tools.prepare_era5", "tools.summary", "train.py", "inference.py"} <= programs
    assert "benchmarks/bench_model.py" in programs


@pytest.mark.parametrize("program", sorted({p for p, _ in _shown_flags()}))
def test_shown_flags_exist(program):
    text = _help(program)
    bad = {
        flag: docs
        for (prog, flag), docs in sorted(_shown_flags().items())
        if prog == program and not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)
    }
    assert not bad, f"flags shown for {program} that its --help does not list: {bad}"


# --------------------------------------------------------------------------------------------------
# docs/code_map.md: one table per folder, one row per module.

MAPPED_FOLDERS = [
    "networks",
    "utils",
    "utils/data",
    "utils/conversion",
    "utils/evaluation",
    "utils/training",
    "tools",
    "benchmarks",
]


def _code_map_rows():
    """{folder: {module file names in its table}}, from the '## `folder/`' headings."""
    rows, folder = {}, None
    for line in read(CODE_MAP).splitlines():
        heading = re.match(r"^## `([\w/]+)/`", line)
        if heading:
            folder = heading.group(1)
            rows[folder] = set()
        elif line.startswith("## "):
            folder = None
        elif folder:
            cell = re.match(r"^\| `([\w.]+)` \|", line)
            if cell:
                rows[folder].add(cell.group(1))
    return rows


@pytest.mark.parametrize("folder", MAPPED_FOLDERS)
def test_code_map_has_one_row_per_module(folder):
    rows = _code_map_rows()
    assert folder in rows, f"docs/code_map.md has no '## `{folder}/`' table"
    path = os.path.join(ROOT, folder)
    modules = {n for n in os.listdir(path) if n.endswith(".py") and n != "__init__.py"}
    missing, stale = sorted(modules - rows[folder]), sorted(rows[folder] - modules)
    assert not missing, f"modules of {folder}/ without a row in docs/code_map.md: {missing}"
    assert not stale, f"rows of {folder}/ in docs/code_map.md naming no module: {stale}"


def test_every_code_folder_has_a_code_map_table():
    folders = {
        os.path.relpath(os.path.dirname(p), ROOT)
        for p in glob.glob(os.path.join(ROOT, "*", "**", "*.py"), recursive=True)
    }
    folders = {f for f in folders if f.split(os.sep)[0] not in ("tests", ".venv", "data", "exp")}
    assert folders <= set(MAPPED_FOLDERS), sorted(folders - set(MAPPED_FOLDERS))


# --------------------------------------------------------------------------------------------------
# Links between the pages: the file exists, and so does the heading an anchor points to.


def _slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    text = re.sub(r"^```[^\n]*\n.*?^```", "", read(path), flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_links_and_anchors_resolve(doc):
    text = re.sub(r"^```[^\n]*\n.*?^```", "", read(doc), flags=re.M | re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        if not os.path.exists(full):
            bad.append(f"{target} (no such file)")
        elif anchor and full.endswith(".md") and anchor not in _anchors(full):
            bad.append(f"{target} (no such heading)")
    assert not bad, f"broken links in {os.path.relpath(doc, ROOT)}: {bad}"
