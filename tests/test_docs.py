"""README.md and docs/: the front page fits on one read, holds the preset table, every command on
every page runs with options its script has, every link leads to a file, and the file names are
the ones the design card promised (eval.py, not evaluate.py)."""

import argparse
import ast
import builtins
import glob
import importlib
import inspect
import os
import re
import shlex
import sys

import pytest

import settings
import uniapl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
NOT_CHECKED = {"pip", "[", ".", "scontrol", "cd", "ruff"}   # other programs' commands


def read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def commands(text: str) -> list[str]:
    """The commands of a page: each line of its ```bash blocks (comments cut), and inline spans
    that start with python, torchrun or srun (joined across line breaks)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line)[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    found += [" ".join(span.split()) for span in re.findall(r"`((?:python|torchrun|srun) [^`]*)`", text)]
    return [part.strip() for cmd in found for part in re.split(r"&&|\|\|", cmd)]


class Parsed(Exception):
    pass


def check(command: str, monkeypatch) -> None:
    """Parse `command`'s arguments with its script's own parser (nothing runs)."""
    command = re.sub(r"\$\(seq (\d+) (\d+)\)", lambda m: " ".join(map(str, range(int(m[1]), int(m[2]) + 1))),
                     command)
    if command.split()[0] in NOT_CHECKED:
        return
    words = [w.strip("[]") for w in shlex.split(command) if w not in ("...", "[...]", "--help")]
    if words[0] in ("pytest", "tools/oldest.sh"):
        assert words[0] == "pytest" or os.path.exists(os.path.join(ROOT, words[0]))
        return
    if words[0] == "srun":
        words = words[1:]
    if words[0] == "torchrun":                       # its own flags (torch's parser), then the script's
        from torch.distributed.run import get_args_parser
        script = next((i for i, w in enumerate(words) if w.endswith(".py")), len(words))
        get_args_parser().parse_args([*words[1:script], "script.py"])
        if script == len(words):
            return
        words = ["python", *words[script:]]
    assert words[0] == "python", f"a command this test does not know: {command}"
    if words[1] == "-c":                             # `python -c "import m; m.f(...)"`: the names exist
        tree = ast.parse(words[2])
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert hasattr(importlib.import_module(node.value.id), node.attr), command
        return
    module, args = (words[2], words[3:]) if words[1] == "-m" else (words[1][:-3].replace("/", "."), words[2:])
    if not (module.startswith("tools.") or os.path.exists(os.path.join(ROOT, module + ".py"))):
        return                                        # python -m venv and the like
    if module == "train":                            # two-stage: --model decides the world's defaults
        settings.parse(args)
        return
    main = importlib.import_module(module).main
    if "parse_args" not in inspect.getsource(main):
        assert not args, f"{command}: {module} takes no options"
        return

    def parsed(self, argv=None, namespace=None):
        raise Parsed(real(self, argv, namespace))

    real = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    with pytest.raises(Parsed):
        main(args)


@pytest.mark.parametrize("page", PAGES)
def test_every_command_parses_with_its_scripts_options(page, monkeypatch):
    cmds = commands(read(page))
    assert cmds, f"{page} names no command"
    for cmd in cmds:
        try:
            check(cmd, monkeypatch)
        except SystemExit as e:              # argparse's error: an option the script lacks
            pytest.fail(f"{page}: `{cmd}` does not parse ({e})")
        monkeypatch.undo()


def test_a_wrong_option_is_caught(monkeypatch):
    """The check can fail: an option train.py and eval.py lack, a choice reproduce.py lacks."""
    for cmd in ("python train.py --no-such-option 1", "python eval.py --model X --limt 3",
                "python -m tools.reproduce sideways --out results"):
        with pytest.raises(SystemExit):
            check(cmd, monkeypatch)
        monkeypatch.undo()


@pytest.mark.parametrize("page", PAGES)
def test_every_link_leads_to_a_file(page):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", read(page)):
        if not target.startswith("http"):
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
            assert os.path.exists(path), f"{page} links to {target}, which is not there"


def test_the_front_page_fits_on_one_read_and_holds_the_preset_table():
    readme = read("README.md")
    assert len(readme.splitlines()) <= 250
    assert uniapl.preset_table() in readme
    for page in PAGES[1:]:                       # every page beside it is linked from it
        assert page in readme, f"README.md does not link {page}"


def test_the_design_cards_names():
    """eval.py, as the design card names it; no module of the method shadows a standard-library
    module. eval.py shadows the builtin `eval` where it is imported: allowed, because nothing here
    calls that builtin (checked below; model text must never reach it anyway)."""
    assert os.path.exists(os.path.join(ROOT, "eval.py")) and not os.path.exists(os.path.join(ROOT, "evaluate.py"))
    for page in [*PAGES, "RESULTS.md", "PAPER.md"]:
        assert "evaluate.py" not in read(page), page
    files = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "tools", "*.py")) + \
        glob.glob(os.path.join(ROOT, "tests", "*.py"))
    for path in files:
        name = os.path.basename(path)[:-3]
        if os.path.dirname(path) == ROOT:
            assert name not in sys.stdlib_module_names, f"{name}.py shadows the standard library's {name}"
            assert name == "eval" or name not in dir(builtins), f"{name}.py shadows the builtin {name}"
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id in ("eval", "exec")]
        assert not calls, f"{path} calls the builtin {calls[0].func.id}"
