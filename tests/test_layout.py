"""The layout: the served path does not depend on the tools, and tests/ mirrors the packages.

``server/`` and the library's served modules never import ``trdq.tools`` (bench, eval CLI,
load tools, zoo training); what both need at serving time lives in ``trdq.runtime``. Only
the ``trdq`` command (``trdq/cli.py``) dispatches to the tools.

Each folder of ``tests/`` tests a package folder of the same name (``trdq/<name>``,
``server``, ``deploy``) or says in tests/README.md's table which one it tests and why it
mirrors none.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = "trdq.tools"
#: The one served-side file allowed to name the tools: the `trdq` command's dispatcher.
DISPATCHERS = {ROOT / "trdq" / "cli.py"}


def _served_files() -> list[Path]:
    files = sorted((ROOT / "server").rglob("*.py")) + sorted((ROOT / "trdq").rglob("*.py"))
    return [
        f for f in files
        if f not in DISPATCHERS and (ROOT / "trdq" / "tools") not in f.parents
    ]


def _tool_imports(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        if any(name == TOOLS or name.startswith(TOOLS + ".") for name in names):
            found.append(f"{path.relative_to(root)}:{node.lineno} {names[0]}")
    return found


def test_served_modules_do_not_import_the_tools():
    files = _served_files()
    assert any(f.parts[-3:] == ("server", "engine", "models.py") for f in files)
    assert any(f.parts[-3:] == ("trdq", "runtime", "compile.py") for f in files)
    offenders = [hit for f in files for hit in _tool_imports(f)]
    assert offenders == [], "served modules import trdq.tools:\n" + "\n".join(offenders)


def test_the_check_sees_an_import_of_the_tools(tmp_path):
    sample = ROOT / "trdq" / "cli.py"  # the dispatcher names the tools only as strings
    assert _tool_imports(sample) == []
    probe = tmp_path / "probe.py"
    probe.write_text("from trdq.tools.bench_variants import apply_torchao\nfrom trdq import tools\n")
    assert len(_tool_imports(probe, tmp_path)) == 2


def test_importing_the_server_loads_no_tool():
    code = (
        "import sys\n"
        "import server.app, server.engine.models, server.__main__\n"
        "print(sorted(m for m in sys.modules if m == 'trdq.tools' or m.startswith('trdq.tools.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "[]"


#: top-level folders that a tests/ folder of the same name mirrors (besides trdq/<name>)
TOP_LEVEL_PACKAGES = {"server", "deploy"}


def _readme_rows() -> dict[str, str]:
    """tests/README.md's table: folder name -> why it mirrors no package folder ('' if it does)."""
    rows = {}
    for line in (ROOT / "tests" / "README.md").read_text().splitlines():
        match = re.match(r"\|\s*`tests/([\w-]+)/`\s*\|[^|]*\|([^|]*)\|\s*$", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_tests_mirror_the_package_folders():
    # a folder left with only __pycache__ (its tests moved away) is not a tests folder
    folders = sorted(d.name for d in (ROOT / "tests").iterdir()
                     if d.is_dir() and not d.name.startswith((".", "__")) and any(d.glob("*.py")))
    rows = _readme_rows()
    assert {"quant", "kernels", "server"} <= set(rows), "tests/README.md's table not parsed"
    assert sorted(rows) == folders, "tests/README.md's table and the folders of tests/ differ"
    unexplained = [name for name in folders
                   if not ((ROOT / "trdq" / name).is_dir() or name in TOP_LEVEL_PACKAGES)
                   and not rows[name]]
    assert unexplained == [], (
        f"{', '.join(unexplained)}: no trdq/, server/ or deploy/ folder of that name; move "
        "the tests, or say why in tests/README.md")
    untested = [d.name for d in (ROOT / "trdq").iterdir()
                if (d / "__init__.py").is_file() and d.name not in folders]
    assert untested == [], f"no tests/ folder for trdq/{', trdq/'.join(untested)}"
