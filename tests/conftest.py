import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on the CPU, whatever the machine has
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
LFW = Path(os.environ.get("TIPIM_LFW", REPO.parent / "shared" / "data" / "lfw"))
LFW_LISTS = LFW.parent / "lfw-lists"


@pytest.fixture(scope="session")
def lfw() -> Path:
    if not (LFW / "Aaron_Eckhart").is_dir():
        pytest.skip(f"needs LFW at {LFW} (set TIPIM_LFW); a user's clone has no ../shared")
    return LFW


def need_model(name: str) -> None:
    from tipim.zoo.registry import is_fetched

    if not is_fetched(name):
        pytest.skip(f"weights of {name!r} are not fetched; run: tipim models fetch {name}")


@pytest.fixture(scope="session")
def zoo():
    """Zoo embedders, loaded once per test session."""
    from tipim.models import ZooEmbedder

    cache: dict = {}

    def get(name: str):
        need_model(name)
        if name not in cache:
            cache[name] = ZooEmbedder(name)
        return cache[name]

    return get
