"""
The shape the user fixed: nanoGPT's scripts at the root, shared code in one package below them,
and files a reader takes in at once (no file over 600 lines, no function over 80, no line over
115 characters). An edit that grows a file past them fails here, not in review.
"""
import ast
import glob
import os
import subprocess

from conftest import ROOT

CARD = {"prepare.py", "model.py", "train.py", "evaluate.py", "plot.py", "sweep.sh", "configurator.py",
        "bench.py", "README.md", "BENCHMARKS.md", "requirements.txt", "config", "tests", "harness"}


def sources():
    return sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "harness", "*.py"))
                  + glob.glob(os.path.join(ROOT, "tests", "*.py")) + [os.path.join(ROOT, "sweep.sh")])


def test_the_root_is_the_card():
    """What the repository holds at its root (a user's data/, out/ and results/ are not its files)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    tracked = ({path.split("/")[0] for path in listed.stdout.split()} if listed.returncode == 0 else
               set(os.listdir(ROOT)) - {"__pycache__", "data", "out", "results"})
    tracked = {name for name in tracked if not name.startswith(".")}
    stray = tracked - CARD
    assert not stray, f"files at the root beyond the card's: {sorted(stray)}; shared code goes in harness/"
    assert CARD <= tracked


def test_files_lines_and_functions_stay_readable_at_once():
    too_long = []
    for path in sources():
        name = os.path.relpath(path, ROOT)
        with open(path) as f:
            text = f.read()
        lines = text.splitlines()
        if len(lines) > 600 and not name.startswith("tests"):      # a test file is a list of cases
            too_long.append(f"{name}: {len(lines)} lines")
        too_long += [f"{name}:{i}: {len(line)} characters" for i, line in enumerate(lines, 1) if len(line) > 115]
        if path.endswith(".py") and not name.startswith("tests"):
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 80:
                        too_long.append(f"{name}:{node.lineno}: {node.name} is {length} lines")
    assert not too_long, "\n".join(too_long)
