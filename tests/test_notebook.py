import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow
def test_results_notebook_runs_on_a_tiny_results_folder(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        a = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(tmp_path / f"src{i}.png")
        Image.fromarray(b).save(run / "images" / f"f{i}.png")
        # as tipim writes them: sources relative to where it ran (TIPIM_ROOT), outputs where the run was made
        lines.append(json.dumps({"id": f"f{i}", "source": f"src{i}.png", "output": f"/elsewhere/run/images/f{i}.png", "status": "ok", "target": "t", "linf": 12, "method": "tipim", "surrogates": ["arcface-mbf"]}))
    (run / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    res = tmp_path / "results"
    res.mkdir()
    rows = [
        {"method": m, "surrogates": ["arcface-mbf"], "eval_model": e, "white_box": e == "arcface-mbf", "rank1_t": v}
        for m, v0 in (("tipim", 0.9), ("mim", 0.5))
        for e, v in (("arcface-mbf", v0), ("sface", v0 / 3))
    ]
    (res / "results.json").write_text(json.dumps(rows))
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "results.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed stripped
    for key, value in (("TIPIM_RESULTS", res), ("TIPIM_RUN", run), ("TIPIM_ROOT", tmp_path)):
        monkeypatch.setenv(key, str(value))  # the kernel inherits them
    (tmp_path / "nb").mkdir()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path / "nb")}}).execute()
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "4"
    for cell in nb.cells[2:]:  # the heat map and the face grid are shown, not just drawn
        assert any("image/png" in o.get("data", {}) for o in cell.outputs)
