"""The GPT-2 124M recipe end to end on a CPU, on a synthetic llm.c shard set: `sweep lr` (one short trial),
`promote best --dry-run`, `promote best --max-steps 2`, then `sample` from the promoted run.

The model is the recipe's (12 layers, width 768, context 1024); only what a CPU cannot afford is overridden: one
1,024-token sequence per step instead of 524,288 tokens, one eval batch, fp32, and the data.
"""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import yaml

from sweep.cli import main
from sweep.recipe import STUDIES_DIR
from train_core.checkpoint import CheckpointManager
from train_core.data import write_llmc_shard
from train_core.tokenizer import VOCAB_SIZE


def write_shards(folder: Path) -> tuple[str, str]:
    """llm.c uint16 shards of random GPT-2 ids, named as llm.c's FineWeb script names them; their globs."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index in range(2):
        write_llmc_shard(folder / f"fineweb_train_{index + 1:06d}.bin", rng.integers(VOCAB_SIZE, size=30_000),
                         version=1)
    write_llmc_shard(folder / "fineweb_val_000000.bin", rng.integers(VOCAB_SIZE, size=10_000), version=1)
    return str(folder / "fineweb_train_*.bin"), str(folder / "fineweb_val_*.bin")


@pytest.mark.slow
def test_gpt2_124m_sweeps_promotes_and_samples_on_synthetic_shards(tmp_path, monkeypatch):
    recipe = yaml.safe_load((STUDIES_DIR / "gpt2-124m.yaml").read_text())
    train, val = write_shards(tmp_path / "fineweb10B")
    recipe |= {
        "data": {"train": train, "val": val},
        "batch": {"total_batch_size": 1024, "micro_batch_size": 1},
        "eval": {"interval": 200, "iters": 1},
        "dtype": "float32",
        "peak_flops": 1.0e11,
    }
    (tmp_path / "gpt2.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    study = ["--study", "gpt2.yaml", "--steps", "2"]

    def run(*args: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(list(args)) == 0, out.getvalue()
        return out.getvalue()

    run("lr", *study, "--trials", "1", "--pruner", "none", "-q")
    plan = run("promote", "best", *study, "--max-steps", "2", "--dry-run")
    assert "124" in plan and not list(tmp_path.glob("runs/*/promote-*")), plan  # the plan names the params; no run
    run("promote", "best", *study, "--max-steps", "2")
    (run_dir,) = tmp_path.glob("runs/gpt2-124m-2/promote-0-2steps")
    assert CheckpointManager(run_dir).done_summary()["result"]["steps_done"] == 2
    text = run("sample", *study, "--prompt", "Hello", "--tokens", "5", "--seed", "1")
    assert f"--- {Path('runs/gpt2-124m-2/promote-0-2steps')}, step 2, seed 1" in text and "Hello" in text, text
