"""The documentation (README.md, docs/*.md) agrees with the code it describes: commands, flags,
config names, parameter counts, the code map and the links between the pages."""

import glob
import os
import re
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
