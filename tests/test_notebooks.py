"""The lab notebooks, executed top to bottom in order, as a learner runs them, against a stack of their own.

The fixture starts that stack first, as `make lab` does, and stops it after the last lab. Every lab states what the
learner should see and checks it (`labkit.expect`); every exercise is run with its solution in place of the
learner's cell, and its check must pass (`LABKIT_STRICT=1`). A failing cell fails its lab; the labs after it then
fail too, as a learner's would.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from stack.config import load_config
from stack.launcher import Stack
from stack.services import service_names

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LABS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
LAB_TIMEOUT_S = 600  # per cell; pytest-timeout bounds the whole lab


def tagged(cell: nbformat.NotebookNode, tag: str) -> bool:
    return tag in cell.metadata.get("tags", [])


def with_solutions(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as a learner who solved every exercise runs it: each `solution` cell's code in place of the
    `exercise` cell before it (the solution cell itself is then left out)."""
    cells, exercise = [], None
    for cell in notebook.cells:
        if tagged(cell, "exercise"):
            exercise = len(cells)
        if tagged(cell, "solution"):
            assert exercise is not None, "a solution cell with no exercise cell before it"
            cells[exercise] = nbformat.v4.new_code_cell(cell.source)
            exercise = None
            continue
        cells.append(cell)
    notebook.cells = cells
    return notebook


def code_cells(lab: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(lab, as_version=4).cells if c.cell_type == "code"]


def test_there_are_twelve_labs_committed_without_outputs():
    assert [lab.name[:2] for lab in LABS] == [f"{n:02d}" for n in range(1, 13)]
    for lab in LABS:
        dirty = [i for i, c in enumerate(code_cells(lab)) if c.outputs or c.execution_count is not None]
        assert not dirty, (f"{lab.name}: code cells {dirty} have outputs; strip them: "
                           f"jupyter nbconvert --clear-output --inplace notebooks/*.ipynb")


@pytest.mark.parametrize("lab", LABS, ids=[lab.stem for lab in LABS])
def test_every_lab_checks_it_is_ready_checks_its_promises_and_ends_with_an_exercise(lab: Path):
    cells = code_cells(lab)
    number = int(lab.name[:2])
    assert f"labkit.ready({number})" in cells[0].source, f"{lab.name}: the first code cell calls labkit.ready"
    assert any("labkit.expect(" in c.source for c in cells), f"{lab.name}: no 'you should see' is checked"
    kinds = [tag for c in cells for tag in ("exercise", "check", "solution") if tagged(c, tag)]
    assert kinds == ["exercise", "check", "solution"] or kinds == ["exercise", "solution", "check"], (
        f"{lab.name}: one exercise, its check and its solution; found {kinds}")
    (solution,) = [c for c in cells if tagged(c, "solution")]
    assert solution.metadata.get("jupyter", {}).get("source_hidden"), f"{lab.name}: the solution is not collapsed"
    assert solution.source.startswith("#"), f"{lab.name}: a collapsed cell shows its first line: make it a comment"
    assert "labkit.check(" in next(c for c in cells if tagged(c, "check")).source


@pytest.mark.parametrize("lab", [lab for lab in LABS if any(tagged(c, "copy") for c in code_cells(lab))],
                         ids=lambda lab: lab.stem)
def test_the_editable_copies_are_the_modules_code(lab: Path):
    """A lab's copy of a function (the learner's to change) is the module's code as it is now, from its `def` on
    (the lines above it may differ: lab 8's copy is on a blueprint of its own)."""
    for cell in (c for c in code_cells(lab) if tagged(c, "copy")):
        module, _, name = cell.metadata["labkit"]["copy_of"].rpartition(".")
        source = inspect.getsource(getattr(importlib.import_module(module), name))
        assert cell.source[cell.source.index("def "):] == source[source.index("def "):].rstrip("\n"), (
            f"{lab.name}: the copy of {module}.{name} is out of date; paste the function's code into that cell")


def test_with_solutions_puts_each_solution_in_place_of_its_exercise():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = ...", metadata={"tags": ["exercise"]}),
        nbformat.v4.new_code_cell("print(x)"),
        nbformat.v4.new_code_cell("check(x)", metadata={"tags": ["check"]}),
        nbformat.v4.new_markdown_cell("**Solution**"),
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["solution"]}),
    ])
    assert [c.source for c in with_solutions(notebook).cells] == ["x = 1", "print(x)", "check(x)", "**Solution**"]


@pytest.fixture(scope="module")
def lab_stack(new_stack_dir, stack_environment) -> Iterator[dict[str, str]]:
    """The labs' own stack, started as `make lab` starts it, and stopped after the last lab."""
    env = stack_environment(new_stack_dir("lab-stack"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("STACK_"):
                patch.setenv(name, value)  # the kernels and the CLIs they run inherit it
        for name in ("MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "KAFKA_BOOTSTRAP", "KUDU_MASTER",
                     "SQL_HOST", "SQL_PORT", "MODEL_URL", "MODEL_ACCESS_KEY", "MODEL_PATH"):
            patch.delenv(name, raising=False)  # only the lab stack's own connection file counts
        patch.setenv("LABKIT_STRICT", "1")  # an exercise whose solution does not pass its check fails the lab
        stack = Stack(load_config(environ=dict(os.environ)))
        try:
            stack.up()
            yield env
        finally:
            stack.down()


def labkit_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(NOTEBOOKS / "labkit.py"), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_lab_started_alone_says_what_to_run_and_reset_provides_it(lab_stack: dict[str, str]):
    missing = labkit_cli("ready", "6")
    assert missing.returncode == 1
    assert "topic iot holds 0 records" in missing.stderr and "make lab-reset 6" in missing.stderr
    reset = labkit_cli("reset", "6")
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert "Lab 6: everything it needs is here." in labkit_cli("ready", "6").stdout


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("lab", LABS, ids=[lab.stem for lab in LABS])
def test_lab_keeps_its_promises_with_its_exercise_solved(lab: Path, lab_stack: dict[str, str]):
    notebook = with_solutions(nbformat.read(lab, as_version=4))
    client = NotebookClient(notebook, kernel_name="python3", timeout=LAB_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    expected = sum(cell.source.count("labkit.expect(") for cell in notebook.cells if cell.cell_type == "code")
    assert printed.count("as promised: ") == expected
    assert printed.count("Well done: ") == 1


@pytest.mark.parametrize("profile", ["single", "cluster"])
def test_a_lab_checks_every_node_of_the_services_it_needs_in_either_profile(profile, monkeypatch):
    monkeypatch.syspath_prepend(str(NOTEBOOKS))
    labkit = importlib.import_module("labkit")  # as the notebooks import it
    names = service_names(load_config(environ={"STACK_PROFILE": profile}))
    roles = {role for needs in labkit.NEEDS.values() for role in needs.services}
    assert all(labkit.nodes_of(role, names) for role in roles - {"spark-master", "spark-worker"}), names
    down = "kafka-2" if profile == "cluster" else "kafka"
    monkeypatch.setattr(labkit, "service_states", lambda: {name: "down" if name == down else "up" for name in names})
    (problem,) = labkit.missing_for(1)
    assert problem.startswith(f"service {down} is down: run `make lab-reset 1`")
    monkeypatch.setattr(labkit, "service_states", lambda: dict.fromkeys(names, "up"))
    assert labkit.missing_for(1) == []
