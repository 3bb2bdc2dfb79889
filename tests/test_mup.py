"""μP in train_core: equal to SP at the base width, the init scales, attention scale, output multiplier and per-group
Adam LRs of nanoGPT-mup's table at other widths, and the refusals (bad widths, a checkpoint of the other
parametrization)."""

import math
from pathlib import Path

import pytest
import torch

from sweep.cli import main
from sweep_fixtures import study_values, write_study
from train_core.checkpoint import CheckpointManager
from train_core.errors import InputError
from train_core.model import GPT, GPTConfig
from train_core.trainer import make_optimizer, train

BASE = 32


def _mup(**model) -> dict:
    return {"parametrization": "mup", "mup_base_width": BASE} | model


def test_mup_at_the_base_width_is_sp_same_weights_and_20_losses(make_config):
    schedule = {"max_steps": 20, "warmup_steps": 5}
    sp = make_config(model={"n_embd": BASE}, schedule=schedule)
    mup = make_config(model=_mup(n_embd=BASE), schedule=schedule)
    torch.manual_seed(0)
    sp_weights = GPT(sp.model).state_dict()
    torch.manual_seed(0)
    mup_weights = GPT(mup.model).state_dict()
    for name, tensor in sp_weights.items():
        assert torch.equal(tensor, mup_weights[name]), name
    sp_run, mup_run = train(sp), train(mup)
    assert len(sp_run.losses) == 20
    assert mup_run.losses == sp_run.losses
    assert mup_run.final_val_loss == sp_run.final_val_loss


def test_base_width_defaults_to_the_recipes_width_and_a_wider_copy_keeps_it(make_config):
    import dataclasses

    config = make_config(model={"parametrization": "mup", "n_embd": 64})
    assert config.model.mup_base_width == 64
    wider = dataclasses.replace(config.model, n_embd=256)
    assert wider.mup_base_width == 64 and wider.width_multiplier == 4


def _std(tensor: torch.Tensor) -> float:
    return tensor.float().std().item()


def test_init_scales_follow_the_table():
    """Hidden weights: std 0.02/sqrt(m) (residual projections also /sqrt(2L)); embeddings 0.02 at every width."""
    m = 8
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=BASE * m, block_size=64, vocab_size=512, **_mup()))
    block = model.transformer.h[0]
    assert _std(block.attn.c_attn.weight) == pytest.approx(0.02 / math.sqrt(m), rel=0.02)
    assert _std(block.mlp.c_fc.weight) == pytest.approx(0.02 / math.sqrt(m), rel=0.02)
    assert _std(block.mlp.c_proj.weight) == pytest.approx(0.02 / math.sqrt(m) / math.sqrt(2 * 2), rel=0.02)
    assert _std(model.transformer.wte.weight) == pytest.approx(0.02, rel=0.02)
    assert _std(model.transformer.wpe.weight) == pytest.approx(0.02, rel=0.02)


def test_attention_scale_is_one_over_d_head_folded_to_sp_at_the_base_width():
    n_head = 2
    base = GPT(GPTConfig(n_layer=1, n_head=n_head, n_embd=BASE, block_size=8, vocab_size=64, **_mup()))
    wide = GPT(GPTConfig(n_layer=1, n_head=n_head, n_embd=4 * BASE, block_size=8, vocab_size=64, **_mup()))
    d_base, d_wide = BASE // n_head, 4 * BASE // n_head
    assert base.transformer.h[0].attn.scale == pytest.approx(1 / math.sqrt(d_base))
    assert wide.transformer.h[0].attn.scale == pytest.approx(math.sqrt(d_base) / d_wide)  # ∝ 1/d_head
    sp = GPT(GPTConfig(n_layer=1, n_head=n_head, n_embd=4 * BASE, block_size=8, vocab_size=64))
    assert sp.transformer.h[0].attn.scale is None  # PyTorch's own 1/sqrt(d_head)


def test_output_logits_are_multiplied_by_alpha_over_m():
    from train_core.model import chunked_cross_entropy

    m, alpha = 4, 2.5
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=BASE * m, block_size=8, vocab_size=64,
                          **_mup(mup_output_alpha=alpha)))
    idx, targets = torch.randint(64, (2, 8)), torch.randint(64, (2, 8))
    h = model.hidden_states(idx).view(-1, BASE * m)
    logits = (h @ model.transformer.wte.weight.T) * alpha / m
    expected = torch.nn.functional.cross_entropy(logits, targets.view(-1))
    torch.testing.assert_close(model(idx, targets), expected)
    assert not torch.allclose(chunked_cross_entropy(h, model.transformer.wte.weight, targets.view(-1)), expected)


def test_per_group_lr_multipliers_and_weight_decay(make_config, tmp_path):
    """Hidden matrices at lr/m with decay x m (lr x decay as SP's); embeddings, biases and LayerNorms at lr; and the
    trainer's schedule scales every group."""
    m = 4
    config = make_config(model=_mup(n_embd=BASE * m), schedule={"max_steps": 3, "warmup_steps": 1},
                         checkpoint={"interval": 3})
    model = GPT(config.model)
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    hidden, embeddings, vectors = optimizer.param_groups
    wd = config.optimizer.weight_decay
    assert (hidden["lr_multiplier"], hidden["weight_decay"]) == (pytest.approx(1 / m), pytest.approx(wd * m))
    assert (embeddings["lr_multiplier"], embeddings["weight_decay"]) == (1.0, wd)
    assert (vectors["lr_multiplier"], vectors["weight_decay"]) == (1.0, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in embeddings["params"]} == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert all(names[id(p)].startswith("transformer.h.") and p.dim() == 2 for p in hidden["params"])
    assert all(p.dim() == 1 for p in vectors["params"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))

    train(config, out_dir=tmp_path)
    saved = CheckpointManager(tmp_path).load_latest()["optimizer"]["param_groups"]
    last_lr = config.schedule.lr(2)
    assert [g["lr"] for g in saved] == [pytest.approx(last_lr / m), last_lr, last_lr]


def test_sp_groups_have_multiplier_one(make_config):
    config = make_config()
    groups = make_optimizer(GPT(config.model), config, torch.device("cpu")).param_groups
    assert [g["lr_multiplier"] for g in groups] == [1.0, 1.0]


@pytest.mark.parametrize(
    "model, named",
    [
        ({"n_embd": 48, "n_head": 5}, "model.n_embd must be a multiple of model.n_head=5, got 48"),
        (_mup(mup_base_width=0), "model.mup_base_width must be a positive width"),
        (_mup(mup_base_width=-8), "got -8"),
        ({"mup_base_width": 32}, "model.mup_base_width must be unset unless model.parametrization is mup"),
        (_mup(mup_output_alpha=0), "model.mup_output_alpha must be > 0"),
        ({"parametrization": "mu-p"}, "model.parametrization must be one of 'sp', 'mup'"),
    ],
)
def test_bad_widths_exit_2_with_one_line(data, tmp_path, monkeypatch, capsys, model, named):
    monkeypatch.chdir(tmp_path)
    values = study_values(data)
    values["model"] |= model
    study = write_study(tmp_path / "bad.yaml", values)
    assert main(["train", "--study", str(study), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_mup_checkpoint_resumed_as_sp_is_refused_naming_both(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    values = study_values(data)
    values["model"] |= {"parametrization": "mup", "mup_base_width": 8}
    values["checkpoint"] = {"interval": 2}
    mup_study = write_study(tmp_path / "mup.yaml", values)
    assert main(["train", "--study", str(mup_study), "--max-steps", "4", "--out", "runs/x"]) == 0
    for key in ("parametrization", "mup_base_width"):
        del values["model"][key]
    sp_study = write_study(tmp_path / "sp.yaml", values)
    capsys.readouterr()
    assert main(["train", "--study", str(sp_study), "--max-steps", "4", "--out", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert "trained under μP with base width 8, but this run is SP" in err and err.count("\n") == 1


def test_resume_under_another_base_width_is_refused(make_config, tmp_path):
    train(make_config(model=_mup(), schedule={"max_steps": 4}, checkpoint={"interval": 2}), out_dir=tmp_path)
    other = make_config(model=_mup(mup_base_width=16), schedule={"max_steps": 8}, checkpoint={"interval": 2})
    with pytest.raises(InputError, match="base width 32, but this run is μP with base width 16"):
        train(other, out_dir=tmp_path)


@pytest.mark.parametrize("name, target", [("mup-proxy", 256), ("gpt2-124m-mup", 768)])
def test_shipped_mup_studies_are_proxies_of_their_target(name, target):
    from sweep.samplers import lr_grid
    from sweep.recipe import load_recipe
    from sweep.width import at_width

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "studies" / f"{name}.yaml")
    proxy = recipe.train.model
    assert proxy.parametrization == "mup" and proxy.mup_base_width == proxy.n_embd  # μP equals SP at the proxy
    assert at_width(recipe.train, n_embd=target).model.width_multiplier == target / proxy.n_embd
    search = recipe.search
    grid = lr_grid(lr_min=search.lr_min, lr_max=search.lr_max, points=7, anchor_lr=search.anchor_lr)
    assert grid == [search.lr_min * 2**k for k in range(7)]  # 7 LRs x2 apart, the anchor among them
