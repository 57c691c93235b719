import os

os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as the tipim command sets it, before torch loads OpenMP

import contextlib  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

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


def run_tipim(args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``tipim ARGS`` in this process, as a finished process: exit code, stdout, stderr.

    It saves the interpreter start, the Lightning import and the model conversion that a fresh
    ``python -m tipim.cli`` pays on every call. Tests that need a real process (DDP, a killed run,
    dropped privileges) keep ``subprocess``. ``env`` is applied for the call; its
    ``OMP_NUM_THREADS`` becomes torch's thread count, as a fresh process would read it.
    """
    from tipim.cli import main

    env = dict(env or {})
    threads = env.pop("OMP_NUM_THREADS", None)
    out, err = io.StringIO(), io.StringIO()
    before = torch.get_num_threads()
    with mock.patch.dict(os.environ, env), contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if threads:
            torch.set_num_threads(int(threads))
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse, jsonargparse and sys.exit("message")
            if isinstance(e.code, str):
                print(e.code, file=err)
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            torch.set_num_threads(before)
    return subprocess.CompletedProcess(["tipim", *map(str, args)], code or 0, out.getvalue(), err.getvalue())


def astronaut(size: int = 256) -> Image.Image:
    """scikit-image's astronaut: a real face photo that ships with a registry package."""
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.BICUBIC)
