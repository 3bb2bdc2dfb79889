"""TrainConfig.from_dict: unknown keys, wrong types and inconsistent values are refused by name; good configs
round-trip through to_dict."""

import pytest

from sweep.cli import main
from sweep_fixtures import study_values, write_study
from train_core.config import ScheduleConfig, TrainConfig
from train_core.errors import InputError


def test_good_config_round_trips(make_config):
    config = make_config()
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config
    assert again.to_dict() == config.to_dict()


def test_ints_widen_to_floats(make_config):
    config = make_config(schedule={"max_lr": 1})
    assert config.schedule.max_lr == 1.0 and isinstance(config.schedule.max_lr, float)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"model": {"n_layers": 4}}, "model.n_layers"),
        ({"schedule": {"lr": 1e-3}}, "schedule.lr"),
        ({"learning_rate": 1e-3}, "learning_rate"),
    ],
)
def test_unknown_keys_are_named(make_config, overrides, named):
    with pytest.raises(InputError, match=f"unknown key {named}"):
        make_config(**overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schedule": {"max_lr": "fast"}}, "schedule.max_lr must be a number, got 'fast'"),
        ({"model": {"n_layer": 2.5}}, "model.n_layer must be an integer, got 2.5"),
        ({"model": {"n_layer": True}}, "model.n_layer must be an integer, got True"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"schedule": "cosine"}, "schedule must be a mapping"),
    ],
)
def test_wrong_types_are_named(make_config, overrides, message):
    with pytest.raises(InputError, match=message):
        make_config(**overrides)


@pytest.mark.parametrize("max_lr", [0, -1e-3])
def test_non_positive_lr_is_refused(make_config, max_lr):
    with pytest.raises(InputError, match=r"schedule.max_lr must be > 0"):
        make_config(schedule={"max_lr": max_lr})


def test_warmup_longer_than_the_run_is_refused(make_config):
    with pytest.raises(InputError, match=r"schedule.warmup_steps must be in \[0, max_steps=10\], got 11"):
        make_config(schedule={"warmup_steps": 11, "max_steps": 10})


def test_unknown_schedule_shape_is_refused_naming_the_registered_ones(make_config):
    registered = "'cosine', 'constant', 'wsd', 'exponential'"
    with pytest.raises(InputError, match=f"schedule.shape must be one of {registered}, got 'linear'"):
        make_config(schedule={"shape": "linear"})


def test_stable_end_is_the_shapes_branch_point():
    """wsd: where its cool-down starts, 100 - 0.2 x 100; the other shapes have no step longer runs share."""
    wsd = ScheduleConfig(shape="wsd", warmup_steps=10, max_steps=100, cooldown_fraction=0.2)
    assert wsd.stable_end == 80
    assert ScheduleConfig(shape="wsd", warmup_steps=10, max_steps=1000, decay_steps=100).stable_end == 80
    for shape in ("cosine", "constant", "exponential"):
        assert ScheduleConfig(shape=shape, warmup_steps=10, max_steps=100).stable_end is None


def test_batch_that_does_not_split_into_micro_steps_shows_the_numbers(make_config):
    # micro 4 x block 16 = 64 tokens per micro-step; 100 is not a multiple of it.
    with pytest.raises(InputError, match=r"4 x 16 x 1 = 64, got 100"):
        make_config(batch={"total_batch_size": 100, "micro_batch_size": 4})


def test_data_with_both_corpus_and_files_is_refused(make_config):
    with pytest.raises(InputError, match="not both"):
        make_config(data={"corpus": "python-stdlib"})


def test_keep_last_below_one_is_refused(make_config):
    with pytest.raises(InputError, match="checkpoint.keep_last must be >= 1"):
        make_config(checkpoint={"keep_last": 0})


@pytest.mark.parametrize("section, key, bad, said", [
    ("model", "loss", "fused", "model.loss must be one of 'auto', 'chunked', 'full', got 'fused'"),
    ("schedule", "shape", "linear", "schedule.shape must be one of 'cosine', 'constant', 'wsd', 'exponential', got 'linear'"),
])
def test_unknown_loss_path_exits_2_with_one_line_naming_the_allowed_ones(section, key, bad, said, data, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    values = study_values(data)
    values[section][key] = bad
    study = write_study(tmp_path / "bad.yaml", values)
    assert main(["train", "--study", str(study), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert said in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


@pytest.mark.parametrize("compile, on_cuda, elsewhere", [(False, False, False), (True, True, True), ("auto", True, False)])
def test_compile_auto_compiles_on_cuda_only(make_config, compile, on_cuda, elsewhere):
    config = make_config(compile=compile)
    assert (config.compiled("cuda"), config.compiled("cpu"), config.compiled("mps")) == (on_cuda, elsewhere, elsewhere)


def test_compile_takes_true_false_or_auto(make_config):
    with pytest.raises(InputError, match="compile must be true or false or one of 'auto', got 'yes'"):
        make_config(compile="yes")


@pytest.mark.parametrize("name", ["gpt2-124m", "gpt2-124m-mup", "gpt-30m"])
def test_the_gpu_recipes_compile_on_cuda_and_run_eagerly_on_a_cpu(name):
    from sweep.recipe import load_recipe

    config = load_recipe(name).train
    assert config.compiled("cuda") and not config.compiled("cpu")
