"""Shared fixtures: small token files in tmp_path and a factory for tiny TrainConfigs that train in milliseconds."""


import numpy as np
import pytest
import torch

from sweep_fixtures import merge, study_values, tiny_recipe, write_study, write_token_files
from train_core.config import TrainConfig
from train_core.data import write_nanogpt_bin

VOCAB = 256


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests train tiny models in one torch thread, like the subprocesses they start (OMP_NUM_THREADS=1): as fast as
    two here, measured 50x faster while another process keeps the 2 cores busy, and the same thread count keeps
    results of in-process and subprocess runs bitwise comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
BLOCK = 16


def _tiny_recipe(train: str, val: str) -> dict:
    """sweep_fixtures.tiny_recipe, 2 layers and 32 wide on a 256-token vocab: 4 sequences of 16 tokens per micro-step,
    10 steps."""
    return tiny_recipe(
        (train, val),
        vocab=VOCAB,
        model={"n_layer": 2, "n_embd": 32},
        batch={"total_batch_size": 4 * BLOCK, "micro_batch_size": 4},
        schedule={"max_steps": 10},
        eval={"interval": 4},
        checkpoint={"interval": 4, "keep_last": 2},
        seed=0,
        dtype="float32",  # explicit: emulated bf16 would be ~400x slower on a CPU without native bf16
        device="cpu",
    )


@pytest.fixture
def token_files(tmp_path):
    """(train, val) paths of uniform random nanoGPT token files over a 256-token vocab."""
    rng = np.random.default_rng(0)
    train, val = tmp_path / "train.bin", tmp_path / "val.bin"
    write_nanogpt_bin(train, rng.integers(VOCAB, size=20_000))
    write_nanogpt_bin(val, rng.integers(VOCAB, size=4_000))
    return str(train), str(val)


@pytest.fixture
def make_config(token_files):
    """make_config(**sections) -> a tiny TrainConfig; e.g. make_config(schedule={"max_steps": 3}, seed=1)."""

    def factory(**overrides) -> TrainConfig:
        return TrainConfig.from_dict(merge(_tiny_recipe(*token_files), overrides))

    return factory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Token files of real text for the tiny sweep study (sweep_fixtures), shared by a test module."""
    return write_token_files(tmp_path_factory.mktemp("tokens"))


@pytest.fixture
def study(data, tmp_path, monkeypatch):
    """The tiny study file in a fresh working directory (runs/ is relative to it)."""
    monkeypatch.chdir(tmp_path)
    return write_study(tmp_path / "tiny.yaml", study_values(data))
