"""The notebooks run top to bottom on a small synthetic results folder and on one that holds only
the reference predictions; they are committed without outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_report import make_synthetic_results

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nb_results")
    make_synthetic_results(root)
    return root


def execute(path: Path, results: Path, monkeypatch) -> str:
    """Run a notebook with AGE_RESULTS_DIR=results; returns its text outputs joined."""
    monkeypatch.setenv("AGE_RESULTS_DIR", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") + str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_the_three_notebooks_are_committed_without_outputs():
    assert {p.name for p in NOTEBOOKS} == {"error_analysis.ipynb", "uncertainty.ipynb",
                                           "generalization.ipynb"}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
        assert "AGE_RESULTS_DIR" in path.read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_synthetic_results(path, synthetic, monkeypatch):
    text = execute(path, synthetic, monkeypatch)  # a failing cell raises CellExecutionError
    assert str(synthetic) in text
    expected = {"error_analysis": "female", "uncertainty": "heads/head=dex__seed=0",
                "generalization": "fgnet - test"}[path.stem]
    assert expected in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_only_the_reference_predictions(path, synthetic, tmp_path,
                                                           monkeypatch):
    shutil.copytree(synthetic / "reference", tmp_path / "reference")
    text = execute(path, tmp_path, monkeypatch)
    expected = {"error_analysis": "from 1 runs in 1 sources",
                "uncertainty": "no ensembling runs yet",
                "generalization": "no less_data runs yet"}[path.stem]
    assert expected in text
