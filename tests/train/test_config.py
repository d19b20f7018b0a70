"""The training config: every mistake is a clear error that names the field; overrides; durations; round trip."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import tiny_sr  # noqa: F401  (registers the tiny-sr-test model)
import yaml

from refsr.errors import RefsrError
from refsr.train.config import (
    apply_overrides,
    config_to_dict,
    describe_schema,
    load_config,
    parse_config,
    schema_paths,
)
from refsr.train.schema import AdversarialLossConfig, Interval, parse_duration

HERE = Path(__file__).parent
CONFIGS = HERE.parents[1] / "configs"


def tiny() -> dict:
    return yaml.safe_load((HERE / "tiny.yaml").read_text())


def error_of(data: dict) -> str:
    with pytest.raises(RefsrError) as err:
        parse_config(data)
    return str(err.value)


def test_the_tiny_config_parses_to_the_documented_values():
    cfg = parse_config(tiny())
    assert cfg.model.name == "tiny-sr-test" and cfg.model.overrides == {"nf": 8}
    source = cfg.data.train.sources[0]
    assert source.dataset == "open-synthetic" and source.options["patch"] == 32 and source.weight is None
    assert cfg.train.checkpoint_interval == Interval(iterations=2)
    assert cfg.optimizer.param_groups[0].match == "offset" and cfg.optimizer.param_groups[0].lr == 1e-4
    assert cfg.optimizer.betas == (0.9, 0.999)
    assert cfg.schedule.name == "cosine" and cfg.schedule.offset == 1
    assert cfg.data.val is not None and cfg.data.val.interval == Interval(iterations=3)
    assert cfg.adversarial is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["train"].update(bacth=4), "train.bacth: unknown field; did you mean batch?"),
        (lambda d: d["train"].update(batch=0), "train.batch: must be >= 1, got 0"),
        (lambda d: d["train"].update(batch="four"), "train.batch: expected an integer, got 'four'"),
        (lambda d: d["optimizer"].update(lr="fast"), "optimizer.lr: expected a number, got 'fast'"),
        (lambda d: d["optimizer"].update(betas=[0.9]), "optimizer.betas: expected a list of 2 values"),
        (lambda d: d["optimizer"].update(betas=[0.9, 1.5]), "optimizer.betas[1]: must be in [0, 1)"),
        (lambda d: d["optimizer"].update(name="sgd"), "optimizer.name: unknown value 'sgd' (choose one of adam, adamw)"),
        (lambda d: d["optimizer"]["param_groups"][0].update(match="(offset"),
         "optimizer.param_groups[0].match: not a valid regular expression"),
        (lambda d: d["schedule"].update(name="cosin"), "schedule.name: unknown value 'cosin'; did you mean cosine?"),
        (lambda d: d["schedule"].update(milestones=[2, 4]), "schedule.milestones: only used by the multistep"),
        (lambda d: d["losses"].append({"name": "l2"}), "losses[1].name: unknown loss 'l2'; did you mean l1?"),
        (lambda d: d["losses"].append({"name": "l1"}), "losses[1].name: 'l1' is listed twice"),
        (lambda d: d["losses"][0].update(wieght=2), "losses[0].wieght: unknown field; did you mean weight?"),
        (lambda d: d.update(losses=[]), "losses: give at least one loss"),
        (lambda d: d["losses"].append({"name": "perceptual"}), "losses[1].vgg_weights: required field is missing"),
        (lambda d: d["model"].pop("name"), "model.name: required field is missing"),
        (lambda d: d["model"].update(name="mas"), "model.name: unknown model 'mas'"),
        (lambda d: d["model"]["overrides"].update(nff=4),
         "model.overrides.nff: model 'tiny-sr-test' has no such option; did you mean nf?"),
        (lambda d: d["data"]["train"]["sources"][0].update(pach=32),
         "data.train.sources[0].pach: unknown field; did you mean patch?"),
        (lambda d: d["data"]["train"]["sources"][0].update(dataset="cufed"),
         "data.train.sources[0].dataset: unknown dataset 'cufed'"),
        (lambda d: d["data"]["train"]["sources"][0].update(seed=3), "data.train.sources[0].seed: set by the engine"),
        (lambda d: d["data"]["train"]["augment"].update(name="c2", jitter=False),
         "data.train.augment.jitter: only used by the masa augmentation"),
        (lambda d: d["data"]["val"].update(select="loss"), "data.val.select: unknown value 'loss'"),
        (lambda d: d["data"]["val"].update(interval={"epochs": 1, "iterations": 2}),
         "data.val.interval: give exactly one of iterations or epochs"),
        (lambda d: d["train"].update(epochs=3), "train: give iterations or epochs, not both"),
        (lambda d: d["train"].pop("iterations"), "train: say how long to train"),
        (lambda d: d["train"].update(time_budget="2 hours"), "train.time_budget: cannot read '2 hours'"),
        (lambda d: d["train"].update(ema_decay=1.5), "train.ema_decay: must be <= 1.0"),
        (lambda d: d.update(data=[1]), "data: expected a mapping"),
        (lambda d: d.update(imports=["no_such_module_xyz"]), "imports[0]: cannot import 'no_such_module_xyz'"),
        (lambda d: d["losses"].append({"name": "adversarial", "discriminator": {"input_size": 48}}),
         "losses[1].discriminator.input_size: must divide by 32"),
    ],
)
def test_a_bad_field_gets_an_error_naming_it(edit, message):
    data = tiny()
    edit(data)
    assert message in error_of(data)


@pytest.mark.parametrize(
    "edit, message",
    [
        # Every kind of pydantic error the schema raises, in our words (the whole line).
        (lambda d: d["train"].update({3: 1}), "train.3: field names must be strings"),
        (lambda d: d["model"]["overrides"].update({1: 2}), "model.overrides.1: keys must be strings"),
        (lambda d: d["data"]["train"]["sources"][0].update({5: 1}), "data.train.sources[0].5: keys must be strings"),
        (lambda d: d["optimizer"].update(betas=[0.9, 0.99, 0.5]),
         "optimizer.betas: expected a list of 2 values, got [0.9, 0.99, 0.5]"),
        (lambda d: d["optimizer"].update(betas=[0.9]), "optimizer.betas: expected a list of 2 values, got [0.9]"),
        (lambda d: d["optimizer"].update(betas=0.9), "optimizer.betas: expected a list of 2 values, got 0.9"),
        (lambda d: d["optimizer"].update(betas=[0.9, "x"]), "optimizer.betas[1]: expected a number, got 'x'"),
        (lambda d: d["losses"].append({"weight": 1.0}),
         ("losses[1].name: required field is missing (one of l1, charbonnier, mse, perceptual, adversarial, "
          "contrastive, distillation)")),
        (lambda d: d["losses"].append({"name": 5}),
         ("losses[1].name: unknown loss 5 (choose from l1, charbonnier, mse, perceptual, adversarial, contrastive, "
          "distillation)")),
        (lambda d: d["losses"].append(3), "losses[1]: expected a mapping such as {name: l1, weight: 1.0}, got 3"),
        (lambda d: d["losses"].append({"name": "perceptual", "vgg_weights": "x", "weight": -1}),
         "losses[1].weight: must be >= 0.0, got -1"),
        (lambda d: d["model"].update(name=5), "model.name: expected a string, got 5"),
        (lambda d: d["model"].update(overrides=[1]), "model.overrides: expected a mapping, got [1]"),
        (lambda d: d.update(imports="tiny_sr"), "imports: expected a list, got 'tiny_sr'"),
        (lambda d: d["train"].update(tensorboard="yes"), "train.tensorboard: expected true or false, got 'yes'"),
        (lambda d: d["train"].update(batch=True), "train.batch: expected an integer, got True"),
        (lambda d: d["train"].update(batch=2.5), "train.batch: expected an integer, got 2.5"),
        (lambda d: d["optimizer"].update(lr="inf"), "optimizer.lr: expected a number, got 'inf'"),
        (lambda d: d["train"].update(checkpoint_interval="often"),
         "train.checkpoint_interval: expected a mapping, got 'often'"),
        (lambda d: d["data"]["val"].update(interval={"epoch": 1}),
         "data.val.interval.epoch: unknown field; did you mean epochs?"),
        (lambda d: d["train"].update(time_budget=[1]),
         "train.time_budget: expected a duration such as 2h or 90m, got [1]"),
        (lambda d: d.pop("train"), "train: required field is missing (run length, batch, checkpoints)"),
        (lambda d: d.pop("losses"), "losses: give at least one loss, e.g. [{name: l1, weight: 1.0}]"),
        (lambda d: d["schedule"].update(unit="epochs"),
         "schedule.unit: unknown value 'epochs'; did you mean epoch? (choose one of iteration, epoch)"),
    ],
)
def test_each_kind_of_mistake_reads_as_one_line(edit, message):
    data = tiny()
    edit(data)
    assert error_of(data) == message


def test_a_config_that_is_not_a_mapping():
    assert error_of([1]) == "the config: expected a mapping, got [1]"  # type: ignore[arg-type]


def test_an_error_the_schema_does_not_raise_today_keeps_pydantics_words():
    from refsr.train.config import _one_line

    error = {"type": "too_short", "loc": ("imports",), "msg": "List should have at least 1 item after validation",
             "input": [], "ctx": {"field_type": "List", "min_length": 1, "actual_length": 0}}
    assert _one_line(error) == "imports: List should have at least 1 item after validation"


def test_numbers_as_yaml_writes_them():
    data = tiny()
    data["train"]["iterations"] = 1.0e+1  # YAML 1.1: a float
    data["train"]["time_budget"] = "1h30m"
    data["optimizer"]["betas"] = ["0.5", 0.9]
    cfg = parse_config(data)
    assert cfg.train.iterations == 10 and isinstance(cfg.train.iterations, int)
    assert cfg.train.time_budget == 5400.0 and cfg.optimizer.betas == (0.5, 0.9)


def test_dataset_options_stand_beside_the_fields_or_in_options():
    data = tiny()
    source = data["data"]["train"]["sources"][0]
    cfg = parse_config(data)
    assert cfg.data.train.sources[0].options == {k: v for k, v in source.items() if k not in ("dataset", "root")}
    # The same options written as a mapping (as Python code may build a SourceConfig) read the same.
    data["data"]["train"]["sources"][0] = {"dataset": source["dataset"], "root": None,
                                           "options": {k: v for k, v in source.items() if k not in ("dataset", "root")}}
    assert parse_config(data) == cfg
    assert config_to_dict(cfg)["data"]["train"]["sources"][0] == {**source, "weight": None}


def test_cross_field_checks():
    data = tiny()
    data["data"]["train"]["crop"] = 64
    data["losses"].append({"name": "adversarial", "discriminator": {"input_size": 32}})
    assert "losses[1].discriminator.input_size: 32 differs from the HR crop data.train.crop = 64" in error_of(data)
    data["data"]["train"]["crop"] = 32
    data["train"]["batch"] = 1
    assert "train.batch: the discriminator's batch norm needs at least 2" in error_of(data)
    data = tiny()
    data["schedule"].pop("t_max")
    data["train"].pop("iterations")
    data["train"]["time_budget"] = "1h"
    assert "schedule.t_max: required for a cosine schedule" in error_of(data)
    data = tiny()
    data["data"]["train"]["sources"].append({"dataset": "open-synthetic", "weight": 1.0, "paths": ["x.png"]})
    assert "data.train.sources: give a weight to every source or to none" in error_of(data)


def test_yaml_1_1_floats_and_interval_shorthand_are_accepted():
    data = tiny()
    data["optimizer"]["lr"] = "2e-4"  # what YAML 1.1 makes of 2e-4
    data["train"]["checkpoint_interval"] = 5
    data["losses"].append({"name": "adversarial", "weight": "5e-3", "discriminator": {"nf": 4, "input_size": 32}})
    cfg = parse_config(data)
    assert cfg.optimizer.lr == 2e-4 and cfg.train.checkpoint_interval == Interval(iterations=5)
    adv = cfg.adversarial
    assert isinstance(adv, AdversarialLossConfig) and adv.weight == 5e-3
    assert adv.optimizer.betas == (0.0, 0.9)  # the discriminator's default, MASA's


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1.5h", 5400),
                                           ("2d", 172800), ("10min", 600), (3600, 3600), ("0.25", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "h", "2 hours", "-1h", 0, "1h 2x"])
def test_bad_durations(bad):
    with pytest.raises(RefsrError, match="time_budget"):
        parse_duration(bad)


def test_overrides_set_nested_fields_list_items_and_yaml_values():
    data = tiny()
    apply_overrides(data, ["train.batch=4", "losses.0.weight=0.5", "optimizer.betas=[0.0, 0.9]",
                           "model.init=null", "data.train.sources.0.patch=48", "schedule.name=multistep",
                           "schedule.milestones=[2, 4]", "schedule.t_max=null", "schedule.eta_min=0.0"])
    assert data["train"]["batch"] == 4 and data["losses"][0]["weight"] == 0.5
    assert data["optimizer"]["betas"] == [0.0, 0.9] and data["model"]["init"] is None
    del data["schedule"]["t_max"], data["schedule"]["eta_min"]
    cfg = parse_config(data)
    assert cfg.train.batch == 4 and cfg.schedule.milestones == [2, 4]
    assert cfg.data.train.sources[0].options["patch"] == 48
    for bad, message in [("train.batch", "expected key.path=value"), ("=3", "expected key.path=value"),
                         ("losses.5.weight=1", "a list of 1 items needs an index 0..0"),
                         ("seed.x=1", "seed is 7, not a mapping"), ("train.batch=[1", "not valid YAML")]:
        with pytest.raises(RefsrError, match=message):
            apply_overrides(tiny(), [bad])


def test_load_config_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text((HERE / "tiny.yaml").read_text())
    cfg = load_config(path, ["name=null"])
    assert cfg.name == "run"  # the file's stem when the config has no name
    with pytest.raises(RefsrError, match=r"run\.yaml: train\.bacth: unknown field; did you mean batch\?"):
        load_config(path, ["train.bacth=2"])
    path.write_text("model: [unclosed\n")
    with pytest.raises(RefsrError, match=r"run\.yaml: not valid YAML"):
        load_config(path)
    path.write_text("")
    with pytest.raises(RefsrError, match="the config is empty"):
        load_config(path)
    with pytest.raises(RefsrError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_the_resolved_config_reads_back_the_same():
    cfg = parse_config(tiny())
    plain = config_to_dict(cfg)
    assert parse_config(copy.deepcopy(yaml.safe_load(yaml.safe_dump(plain)))) == cfg


def test_cli_reports_a_bad_config_in_one_line(capsys, tmp_path):
    from refsr.train.cli import main

    status = main([str(HERE / "tiny.yaml"), "--out", str(tmp_path), "--set", "train.bacth=2"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("refsr: error: ") and "train.bacth: unknown field; did you mean batch?" in err
    assert not any(tmp_path.iterdir())  # nothing was written


def test_the_schema_description_covers_every_field():
    paths = schema_paths()
    for expected in ("train.batch", "train.time_budget", "train.grad_accumulation", "train.ema_decay",
                     "optimizer.param_groups[].match", "schedule.unit", "data.val.interval",
                     "losses[name=adversarial].discriminator.input_size", "data.train.sources[].<option>"):
        assert expected in paths
    assert len(paths) == len(set(paths)) and all(" -- " in line for line in describe_schema().splitlines())


def _train_configs() -> list[str]:
    """Every shipped config: `refsr train` reads them all, whatever their task."""
    return sorted(p.name for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("name", _train_configs())
def test_shipped_configs_are_valid(name):
    cfg = load_config(CONFIGS / name)
    assert parse_config(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))) == cfg


def test_the_configs_readme_follows_the_schema():
    from refsr.data.registry import DATASETS

    readme = (CONFIGS / "README.md").read_text(encoding="utf-8")
    assert describe_schema() in readme  # the generated field list is current
    for name in DATASETS:
        assert f"| `{name}` |" in readme
    for config in CONFIGS.glob("*.yaml"):
        assert f"`{config.name}`" in readme


def test_gan_kinds_and_discriminators_parse_with_the_documented_spelling():
    data = tiny()
    # What configs/amsa.yaml and configs/ssen-gan.yaml write.
    data["losses"] += [{"name": "adversarial", "kind": "wgan_gp", "gradient_penalty": 10.0, "weight": 1.0e-6,
                        "discriminator": {"name": "image", "nf": 32, "sigmoid": True}}]
    adv = parse_config(data).adversarial
    assert (adv.kind, adv.gradient_penalty, adv.discriminator.name, adv.discriminator.width) == \
        ("wgan_gp", 10.0, "image", 32)
    data["losses"][1] = {"name": "adversarial", "kind": "vanilla", "discriminator": {"name": "patchgan"}}
    data["train"]["batch"] = 1  # the fixed-size checks concern only the VGG-style discriminator
    adv = parse_config(data).adversarial
    assert (adv.discriminator.width, adv.discriminator.n_layers, adv.discriminator.norm) == (64, 3, "batch")
    for loss, message in [
        ({"name": "adversarial", "gradient_penalty": 5.0}, "losses[1].gradient_penalty: only used by kind wgan_gp"),
        ({"name": "adversarial", "discriminator": {"name": "patchgan", "input_size": 64}},
         "losses[1].discriminator.input_size: only used by the vgg_style discriminator"),
        ({"name": "adversarial", "discriminator": {"name": "image", "norm": "instance"}},
         "losses[1].discriminator.norm: only used by the patchgan discriminator"),
        ({"name": "adversarial", "kind": "hinge"}, "losses[1].kind: unknown value 'hinge'"),
        ({"name": "perceptual", "criterion": "l2", "vgg_weights": "x"}, "losses[1].criterion: unknown value 'l2'"),
    ]:
        data = tiny()
        data["losses"].append(loss)
        assert message in error_of(data)


# configs/ccnet-lite.yaml in this schema's layout: the ccnet section, the model from model.overrides, and the
# paper's "lr 1e-3, then 5e-5 from iteration N" as a multistep schedule (gamma = 5e-5 / 1e-3).
CCNET_LITE = """
task: ccnet
name: ccnet-lite
seed: 0
model:
  name: refsr.models.refsrnet:CCNet
  overrides: {channels: [8, 16, 32, 32, 32, 64], dilations: [1, 1, 2, 4, 8, 16], out_channels: 128}
data:
  train:
    sources:
      - {dataset: open-synthetic, split: train, patch: 160, scale_range: [0.8, 1.25], rotation: 15.0}
    num_workers: 2
  val: null
ccnet: {window: 65, scale: 8, grid: 8, crops_per_sample: 4, rotate: true}
optimizer: {name: adam, lr: 1.0e-3, betas: [0.9, 0.999]}
schedule: {name: multistep, unit: iteration, milestones: [15000], gamma: 0.05}
train: {batch: 8, iterations: 20000, log_interval: 50, checkpoint_interval: 1000, device: cpu, time_budget: 6h}
"""


def test_the_shipped_ccnet_lite_config_is_the_documented_layout():
    from refsr.train.builders import lr_factor

    cfg = parse_config(yaml.safe_load(CCNET_LITE))
    assert load_config(CONFIGS / "ccnet-lite.yaml") == cfg
    assert (cfg.task, cfg.losses, cfg.model.overrides["out_channels"]) == ("ccnet", [], 128)
    # The paper's step schedule: 1e-3, then 5e-5 from the milestone on.
    for iteration, lr in ((0, 1e-3), (14999, 1e-3), (15000, 5e-5), (19999, 5e-5)):
        factor = lr_factor(cfg.schedule, iteration=iteration, epoch=0, total_units=None, base_lr=cfg.optimizer.lr)
        assert cfg.optimizer.lr * factor == pytest.approx(lr, rel=1e-12)
    assert cfg.train.checkpoint_interval == Interval(iterations=1000) and cfg.train.time_budget == 6 * 3600
    assert parse_config(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))) == cfg


def test_the_task_registry_runs_every_task_the_schema_accepts():
    from refsr.train.schema import TASKS as SCHEMA_TASKS
    from refsr.train.tasks import TASKS

    assert sorted(TASKS) == sorted(SCHEMA_TASKS)


def ccnet_lite() -> dict:
    return yaml.safe_load(CCNET_LITE)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(losses=[{"name": "l1"}]),
         "losses: task ccnet trains with CC-Net's own classification loss (Eq. 1); remove losses"),
        (lambda d: d["data"]["train"].update(crop=64),
         "data.train.crop: not used by task ccnet, which cuts its own crops (see the ccnet section)"),
        (lambda d: d["data"]["train"].update(augment={"name": "masa"}),
         "data.train.augment: not used by task ccnet, which cuts its own crops (see the ccnet section)"),
        (lambda d: d["data"].update(val={"dataset": "cufed5", "root": "x"}),
         "data.val: task ccnet does not validate; set data.val: null"),
        (lambda d: d["train"].update(ema_decay=0.9), "train.ema_decay: not supported by task ccnet"),
        (lambda d: d.update(contrastive={"perturb": 5.0}),
         "contrastive: only used by the contrastive tasks; remove it or set task"),
        (lambda d: d["model"].update(name="refsrnet"),
         "model.name: task ccnet trains a CC-Net: name its class, refsr.models.refsrnet:CCNet, not 'refsrnet'"),
        (lambda d: d["model"]["overrides"].update(dilation=[1]),
         "model.overrides.dilation: model 'refsr.models.refsrnet:CCNet' has no such option; did you mean "
         "dilations? (its options: channels, dilations, out_channels)"),
        (lambda d: d["ccnet"].update(windw=3), "ccnet.windw: unknown field; did you mean window?"),
        (lambda d: d["ccnet"].update(window=0), "ccnet.window: must be >= 1, got 0"),
    ],
)
def test_ccnet_mistakes_are_named(edit, message):
    data = ccnet_lite()
    edit(data)
    assert error_of(data) == message


def test_the_ccnet_section_needs_task_ccnet():
    data = tiny()
    data["ccnet"] = {"window": 33}
    assert error_of(data) == "ccnet: only used by task ccnet; remove it or set task"
    data = tiny()
    data["model"]["name"] = "refsr.models.refsrnet:CCNet"
    assert error_of(data).startswith("model.name: 'refsr.models.refsrnet:CCNet': module:attribute names are for "
                                     "the contrastive tasks and ccnet")
