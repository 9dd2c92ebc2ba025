"""Registry (build by name, signature/type validation) and typed YAML configs (errors name the key path)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mrlearn import registry
from mrlearn.config import (ExperimentConfig, config_from_dict, dump_config, load_config, register_section,
                            set_override)
from mrlearn.errors import MrlearnError


def test_builtin_entries_are_registered():
    assert "unet" in registry.available("model")
    assert {"l1", "l2", "ssim"} <= set(registry.available("loss"))
    assert {"rmsprop", "adam"} <= set(registry.available("optimizer"))
    assert "step" in registry.available("scheduler")
    assert "supervised" in registry.available("method")
    assert {"random", "equispaced", "poisson"} <= set(registry.available("mask"))


def test_build_passes_config_and_runtime_arguments():
    model = registry.build("model", {"name": "unet", "chans": 4, "num_pool_layers": 2}, "model")
    assert model.down[0].layers[0].out_channels == 4
    opt = registry.build("optimizer", {"name": "rmsprop", "lr": 0.5}, "optim", params=model.parameters())
    assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["lr"] == 0.5
    sched = registry.build("scheduler", {"name": "step", "step_size": 3, "gamma": 0.5}, "scheduler", optimizer=opt)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)  # closed form: lr * gamma ** (3 // 3)


@pytest.mark.parametrize("section, fragment", [
    ({"name": "unet", "chan": 4}, "model.chan: unknown option for model 'unet'; valid keys: chans, drop_prob"),
    ({"name": "unet", "chans": 4.5}, "model.chans: expected an integer, got 4.5"),
    ({"name": "unet", "chans": True}, "model.chans: expected an integer, got True"),
    ({"name": "unetx"}, "model.name: unknown model 'unetx'; choose one of"),
    ({"chans": 4}, "model: needs a 'name'"),
])
def test_build_errors_are_one_line_and_name_the_key(section, fragment):
    with pytest.raises(MrlearnError) as err:
        registry.build("model", section, "model")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_register_rejects_a_second_object_under_the_same_name():
    with pytest.raises(ValueError):
        registry.register("model", "unet")(lambda: None)


def test_shipped_configs_load_and_round_trip():
    for name in ("unet_demo", "unet_fastmri_knee"):
        cfg = load_config(name)
        again = config_from_dict(__import__("yaml").safe_load(dump_config(cfg)))
        assert again == cfg
    knee = load_config("unet_fastmri_knee")
    assert knee.model == {"name": "unet", "in_chans": 1, "out_chans": 1, "chans": 32, "num_pool_layers": 4, "drop_prob": 0.0}
    assert knee.optim["name"] == "rmsprop" and knee.optim["lr"] == 1e-3
    assert knee.scheduler == {"name": "step", "step_size": 40, "gamma": 0.1} and knee.trainer.max_epochs == 50
    assert knee.mask == {"name": "random", "accelerations": [4], "center_fractions": [0.08]}
    assert knee.method["loss"] == {"name": "l1"}


def test_overrides_are_parsed_as_yaml():
    cfg = load_config("unet_demo", ["model.chans=8", "data.recon_size=[64, 48]", "trainer.gradient_clip_val=0.5",
                                    "scheduler=null", "method.loss=ssim", "name=x y"])
    assert cfg.model["chans"] == 8 and cfg.data.recon_size == [64, 48]
    assert cfg.trainer.gradient_clip_val == 0.5 and cfg.scheduler is None
    assert cfg.method["loss"] == {"name": "ssim"} and cfg.name == "x y"


@pytest.mark.parametrize("override, fragment", [
    ("model.chanz=8", "model.chanz: unknown option for model 'unet'"),
    ("data.batch_sise=2", "data.batch_sise: unknown key; valid keys:"),
    ("trainer.max_epochs=ten", "trainer.max_epochs: expected an integer, got 'ten'"),
    ("data.contrasts=PD", "data.contrasts: expected a list or null"),
    ("optim.name=sgdx", "optim.name: unknown optimizer 'sgdx'"),
    ("method.loss.name=l3", "method.loss.name: unknown loss 'l3'"),
    ("trainer.max_epochs=0", "trainer.max_epochs: 0 is not at least 1"),
    ("data.recon_size=[320]", "data.recon_size: expected [h, w]"),
    ("bogus=1", "bogus: unknown key"),
    ("model.chans", "--set model.chans: expected key.path=value"),
])
def test_config_errors_name_the_key_path(override, fragment):
    with pytest.raises(MrlearnError) as err:
        load_config("unet_demo", [override])
    assert fragment in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_errors_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(MrlearnError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(MrlearnError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(MrlearnError, match="not valid YAML"):  # safe_load refuses python tags
        load_config(unsafe)


def test_registered_sections_extend_the_config():
    @dataclass
    class TasksSection:
        weights: list[float] | None = None
        names: list[str] | None = None

    register_section("test_tasks", TasksSection)
    cfg = config_from_dict({"name": "mtl", "test_tasks": {"names": ["PD", "PDFS"], "weights": [1, 0.5]}})
    assert cfg.extra["test_tasks"] == TasksSection(weights=[1, 0.5], names=["PD", "PDFS"])
    assert "test_tasks:" in dump_config(cfg)
    with pytest.raises(MrlearnError, match="test_tasks.weight: unknown key"):
        config_from_dict({"test_tasks": {"weight": [1]}})


def test_set_override_creates_nested_sections():
    raw: dict = {"scheduler": None}
    set_override(raw, "scheduler.name=step")
    assert raw == {"scheduler": {"name": "step"}}
    assert isinstance(ExperimentConfig().run_dir().name, str)
