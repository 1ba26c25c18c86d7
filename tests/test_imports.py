"""The package's modules import each other without a cycle, counting the
imports inside functions (a cycle hidden in a function still ties two modules
into one unit that cannot be read, tested or replaced apart)."""
import ast
from pathlib import Path

PKG = Path(__file__).parents[1] / "tibalance"


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """{module: the package modules it imports}, read with ast (nothing is executed)."""
    mods = {p.stem for p in pkg.glob("*.py")}
    graph = {}
    for p in pkg.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:  # from .x import y
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:  # from . import x
                    deps |= {a.name for a in node.names}
                elif node.module and node.module.split(".")[0] == pkg.name:
                    parts = node.module.split(".")
                    deps |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith(pkg.name + ".")}
        graph[p.stem] = (deps & mods) - {p.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n    return g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\n")
    assert find_cycle(import_graph(pkg)) == ["a", "b", "c", "a"]
    (pkg / "c.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_no_function_in_the_package_is_over_120_lines():
    """A function a reader can hold: the long ones are split into named parts."""
    long = [f"{p.name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)" for p in sorted(PKG.glob("*.py"))
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 120]
    assert not long, long


def workflow_imports(root: Path = PKG.parent) -> list[str]:
    """The import statements at the top level of the Snakefile and rules/*.smk
    (a statement over several lines kept whole): what every snakemake start
    executes before it plans a job."""
    out = []
    for f in [root / "Snakefile", *sorted((root / "rules").glob("*.smk"))]:
        lines = f.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].startswith(("import ", "from ")):
                stmt = lines[i]
                while stmt.count("(") > stmt.count(")"):
                    i += 1
                    stmt += "\n" + lines[i]
                out.append(stmt)
            i += 1
    return out


def test_planning_a_workflow_imports_no_torch():
    """Every snakemake start (each dry run, each planned edit, each SLURM job's
    own start) parses the Snakefile: its imports must not pull in torch (a
    second on 2 cores) - tibalance.defaults' rule for what the Snakefile reads.
    Catches a workflow-level import from a module that imports torch at its top."""
    import subprocess
    import sys

    stmts = workflow_imports()
    assert any("tibalance.defaults" in s for s in stmts) and any("paper_split_ratio" in s for s in stmts)
    code = "import sys\n" + "\n".join(stmts) + "\nprint(sorted(m for m in ('torch', 'torchvision', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
