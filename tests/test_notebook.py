"""notebooks/demo.ipynb runs top to bottom on a debug=smoke experiment."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "demo.ipynb"


def test_demo_notebook_executes(smoke_experiment: Path, monkeypatch) -> None:
    monkeypatch.setenv("MCKD_EXPERIMENT_DIR", str(smoke_experiment))
    monkeypatch.setenv("WANDB_MODE", "offline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # raises on any cell error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, "overlays, stages plot and pictures shown"
    assert any(str(smoke_experiment) in o.get("text", "") for o in outputs)
