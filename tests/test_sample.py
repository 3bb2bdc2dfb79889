"""`sweep sample`: text from a trained run, deterministic with a seed; by default from the promoted best trial."""

import contextlib
import io

import pytest

from promote_fixtures import (
    SWEEP_STEPS,
    load,
    promote_args,
    recipe_values,
    run_sweep,
    working_dir,
    write_recipe,
    write_tokens,
)
from sweep.cli import main
from sweep.sample import Sampling, sample_text
from train_core.errors import InputError
from train_core.tokenizer import gpt2_encoding
from train_core.trainer import train


@pytest.fixture
def run_dir(make_config, tmp_path):
    """A tiny model (256-token vocab) trained for 10 steps, its checkpoints in run/."""
    train(make_config(), out_dir=tmp_path / "run")
    return tmp_path / "run"


def test_the_same_seed_writes_the_same_text_and_another_seed_other_text(run_dir):
    # "a" is GPT-2 id 64 (printable bytes come first, from "!" = 0), inside the tiny model's 256 ids
    first, state = sample_text(run_dir, prompt="a", sampling=Sampling(tokens=30, seed=1), device_name="cpu")
    again, _ = sample_text(run_dir, prompt="a", sampling=Sampling(tokens=30, seed=1), device_name="cpu")
    other, _ = sample_text(run_dir, prompt="a", sampling=Sampling(tokens=30, seed=2), device_name="cpu")
    assert first == again and first != other
    assert first.startswith("a") and len(gpt2_encoding().encode(first)) >= 2  # the prompt, then what was drawn
    assert state["step"] == 10


def test_top_k_1_is_the_most_likely_token_every_time(run_dir):
    """With k = 1 the seed cannot matter: every draw is the argmax."""
    texts = {sample_text(run_dir, prompt="a", sampling=Sampling(tokens=12, top_k=1, seed=seed),
                         device_name="cpu")[0] for seed in range(3)}
    assert len(texts) == 1


def test_a_prompt_outside_the_models_vocabulary_is_refused(run_dir):
    with pytest.raises(InputError, match="prompt holds GPT-2 token 15496, outside this model's vocabulary of 256"):
        sample_text(run_dir, prompt="Hello", sampling=Sampling(tokens=5), device_name="cpu")


def test_a_run_of_a_folded_vocabulary_is_refused(make_config, tmp_path):
    train(make_config(data={"top_tokens": 64}, model={"vocab_size": 64}, schedule={"max_steps": 2}), out_dir=tmp_path / "run")
    with pytest.raises(InputError, match=r"folded vocabulary \(data.top_tokens=64\): its ids are not GPT-2 tokens"):
        sample_text(tmp_path / "run", prompt="", sampling=Sampling(tokens=5), device_name="cpu")


def test_a_folder_without_checkpoints_exits_2_in_one_line(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nothing"), "--tokens", "5"]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("flag, value", [("--temperature", "0"), ("--top-k", "0"), ("--tokens", "-1")])
def test_bad_sampling_flags_exit_2(run_dir, capsys, flag, value):
    assert main(["sample", str(run_dir), flag, value]) == 2
    assert flag in capsys.readouterr().err


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A tiny sweep and `promote best`, run in-process in their own folder."""
    folder = tmp_path_factory.mktemp("promoted")
    write_recipe(folder / "tiny.yaml", recipe_values(write_tokens(folder / "tokens")))
    with working_dir(folder), contextlib.redirect_stdout(io.StringIO()):
        assert run_sweep() == 0
        assert main(promote_args("best")) == 0
    return folder


def test_sample_writes_from_the_promoted_best_run_by_default(promoted, capsys):
    with working_dir(promoted):
        # "A" is GPT-2 id 32, inside the tiny recipe's 64 ids
        args = ["sample", "--study", "tiny.yaml", "--steps", str(SWEEP_STEPS), "--prompt", "A", "--tokens", "20",
                "--seed", "5", "--samples", "2"]
        assert main(args) == 0
        first = capsys.readouterr().out
        assert main(args) == 0
        assert capsys.readouterr().out == first  # seeded: the same two samples again
    best = load(promoted).best_trial.number
    headers = [line for line in first.splitlines() if line.startswith("--- ")]
    assert len(headers) == 2 and all(f"promote-{best}, step 30" in h for h in headers), first
    assert "seed 5" in headers[0] and "seed 6" in headers[1]
