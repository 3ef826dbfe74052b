"""The scripts pasted into notebook cells (issue 14): the literal text of the six scripts, in order,
each followed by a call of its function, runs in a real Jupyter kernel whose working directory
holds none of the project's files; and the rule that makes this safe, checked on the source."""

import ast
import os
import symtable

import pytest

from conftest import ROOT

SCRIPTS = ["common", "cls_train", "seg_train", "predict", "attack", "run_all"]  # the order they are pasted in
ENTRY_POINTS = {"train", "run", "main"}  # reached only qualified (cls_train.train) by the other scripts


def source(name):
    with open(os.path.join(ROOT, name + ".py"), encoding="utf-8") as f:
        return f.read()


def top_level_names(tree):
    """(defined, imported): the names a module's top-level statements bind, by kind."""
    defined, imported = set(), set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                defined.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
    return defined, imported


def test_no_top_level_name_is_defined_in_two_scripts():
    # Pasted cells share the notebook's one namespace, where a function looks up its globals: a name
    # that a later script defines again would silently replace the earlier script's for its functions.
    where = {}
    for name in SCRIPTS:
        defined, _ = top_level_names(ast.parse(source(name)))
        for n in defined - ENTRY_POINTS:
            where.setdefault(n, []).append(name)
    assert {n: s for n, s in where.items() if len(s) > 1} == {}
    # an imported name may only be the very object another script defines (from common import CLASSES)
    for name in SCRIPTS:
        for node in ast.parse(source(name)).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    bound = (a.asname or a.name).split(".")[0]
                    owners = [s for s in where.get(bound, []) if s != name]
                    assert not owners or (isinstance(node, ast.ImportFrom) and owners == [node.module]
                                          and a.asname is None), (name, bound, owners)


def nested_tables(table, path=()):
    """(qualified name, symbol table) of every function and class inside `table`, at any depth."""
    for child in table.get_children():
        inner = path + (child.get_name(),)
        yield inner, child
        yield from nested_tables(child, inner)


def test_only_main_uses_its_scripts_entry_point_unqualified():
    # after a later script is pasted, an unqualified train/run points at that script's function
    for name in SCRIPTS:
        for path, table in nested_tables(symtable.symtable(source(name), name + ".py", "exec")):
            used = {s.get_name() for s in table.get_symbols()
                    if s.get_name() in ENTRY_POINTS and s.is_global() and s.is_referenced()}
            assert not used or path[0] == "main", (name, ".".join(path), used)


def notebook(cells_after):
    """Cells: each script's literal text, then the call that follows it."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    for name in SCRIPTS:
        nb.cells += [nbformat.v4.new_code_cell(source(name)), nbformat.v4.new_code_cell(cells_after[name])]
    return nb


# Tiny sizes as in conftest.tiny_runs and test_run_all.TINY; each call is the function of the script
# pasted just before it, unqualified, as a user would write it.
CALLS = {
    "common": 'data = make_demo("demo", n_train=24, n_test=8, scale=0.25)\n'
              'dataset_summary(data, "data_check")',
    "cls_train": 'train(data=data, arch="scratch", out="cls", img_size=32, epochs=1, width=8, batch_size=8,'
                 ' verbose=0)',
    "seg_train": 'train(data=data, arch="unet", out="seg", img_size=64, epochs=1, width=8, batch_size=4,'
                 ' verbose=0)',
    "predict": 'scores, path = run(data=data, cls="cls", seg="seg", out="predict", score=True)\n'
               'print(scores)',
    "attack": 'run(target="cls", goal="cls_targeted", target_class="aeroplane", eps=8.0, epochs=1, width=8,'
              ' batch_size=8, max_train=16, max_eval=8, pgd_steps=2, out="attack", verbose=0)',
    "run_all": 'plan = {"cls": dict(arch="scratch", img_size=32, epochs=1, width=8, batch_size=8),\n'
               '        "seg": dict(arch="unet", img_size=32, epochs=1, width=8, batch_size=8),\n'
               '        "attack": dict(goal="cls_targeted", eps=8.0, epochs=1, width=8, batch_size=8,'
               ' max_train=16, max_eval=8, pgd_steps=2)}\n'
               'summary = run(data, "all", plan=plan, verbose=0)\n'
               'import os, sys\n'
               'assert not os.path.exists("common.py") and not hasattr(sys.modules["common"], "__file__")\n'
               'assert not summary["side_by_side"]  # pasted code cannot be imported by a new process',
}


@pytest.mark.slow
def test_pasted_scripts_run_in_a_notebook_kernel(tmp_path):
    nbclient = pytest.importorskip("nbclient")  # test-only dependencies (requirements.txt)
    work = tmp_path / "kaggle_working"  # holds none of the project's files
    work.mkdir()
    # the kernel sees the test's environment (KERAS_HOME included, where set) but not the project
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    nb = notebook(CALLS)
    # kernel_name="python3": ipykernel's own kernel, started with this interpreter
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    client.execute(env=env)  # raises CellExecutionError (with the traceback) if a cell errors
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == []
    for path in ["data_check/samples.png", "cls/model.keras", "cls/thresholds.json", "seg/model.keras",
                 "predict/submission.csv", "predict/scores.json", "attack/metrics.json", "all/summary.md",
                 "all/predict/submission.csv", "all/attack/metrics.json"]:
        assert (work / path).is_file(), path
