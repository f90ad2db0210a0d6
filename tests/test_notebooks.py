"""The lab notebooks, executed top to bottom in order, as a learner runs them, against a stack of their own.

Lab 1 starts that stack itself (`python -m stack up`, in a temporary STACK_DIR on free ports); the fixture stops
it after lab 10. A failing cell fails its lab; the labs after it then fail too, as a learner's would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from stack.config import load_config
from stack.launcher import Stack

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LABS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
LAB_TIMEOUT_S = 600  # per cell; pytest-timeout bounds the whole lab


def test_there_are_ten_labs_committed_without_outputs():
    assert [lab.name[:2] for lab in LABS] == [f"{n:02d}" for n in range(1, 11)]
    for lab in LABS:
        cells = [c for c in nbformat.read(lab, as_version=4).cells if c.cell_type == "code"]
        dirty = [i for i, c in enumerate(cells) if c.outputs or c.execution_count is not None]
        assert not dirty, (f"{lab.name}: code cells {dirty} have outputs; strip them: "
                           f"jupyter nbconvert --clear-output --inplace notebooks/*.ipynb")


@pytest.fixture(scope="module")
def lab_stack(tmp_path_factory: pytest.TempPathFactory, stack_environment) -> Iterator[dict[str, str]]:
    """Environment for the labs' own stack (started by lab 1); stopped after the last lab."""
    env = stack_environment(tmp_path_factory.mktemp("lab-stack"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("STACK_"):
                patch.setenv(name, value)  # the kernels and the CLIs they run inherit it
        for name in ("MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "KAFKA_BOOTSTRAP", "KUDU_MASTER",
                     "SQL_HOST", "SQL_PORT", "MODEL_URL", "MODEL_ACCESS_KEY", "MODEL_PATH"):
            patch.delenv(name, raising=False)  # only the lab stack's own connection file counts
        try:
            yield env
        finally:
            Stack(load_config(environ=dict(os.environ))).down()


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("lab", LABS, ids=[lab.stem for lab in LABS])
def test_lab_runs_top_to_bottom(lab: Path, lab_stack: dict[str, str]):
    notebook = nbformat.read(lab, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=LAB_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
