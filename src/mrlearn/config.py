"""Experiment configs: one YAML file -> typed dataclasses, validated on load.

``load_config(path, overrides)`` reads the YAML with a safe loader that reads floats as YAML 1.2 does (``1e-4``
is a number; :mod:`mrlearn.yamlfile`), refuses an empty file, applies ``--set key.path=value``
overrides (values parsed as YAML scalars/lists, so ``--set model.chans=16`` gives an int), then checks every
key: unknown keys and wrong types raise a one-line :class:`~mrlearn.errors.MrlearnError` naming the key path
(``model.chans``). Named sections (``mask``, ``model``, ``method``, ``method.loss``, ``optim``, ``scheduler``)
are ``{name: ..., <keyword args>}`` and are validated against the registry entry's signature. ``model.init``
(null or a file path) is no model option: the built model starts from the weights in that file
(:mod:`mrlearn.models.weights`).

Extensibility: later capabilities add top-level sections with :func:`register_section` (a dataclass per
section); the entry-point group ``mrlearn.section`` names the module that registers a section, imported lazily when a
config uses it. Registered sections land in ``ExperimentConfig.extra[name]``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mrlearn import registry
from mrlearn.early_stopping import EarlyStoppingConfig, check_early_stopping  # noqa: F401 - re-exported
from mrlearn.errors import input_error
from mrlearn.progress import check_every
from mrlearn.yamlfile import YamlLoader, read_yaml_file, yaml_load  # noqa: F401 - re-exported


# ----------------------------------------------------------------------------------------------- type checking


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "bool": "true/false", "str": "a string",
                "list": "a list", "dict": "a mapping"}.get(hint.__name__, hint.__name__)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple, typing.Sequence):
        return "a list"
    if origin is dict:
        return "a mapping"
    return str(hint)


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or hint is typing.Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (list, typing.Sequence, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return all(_matches(v, inner) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        kt, vt = args if args else (Any, Any)
        return all(_matches(k, kt) and _matches(v, vt) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # hints we do not understand are not checked


def check_type(value: Any, hint: Any, where: str) -> None:
    """Raise a one-line error at ``where`` unless ``value`` (plain YAML data) matches the type hint."""
    if not _matches(value, hint):
        raise input_error(where, f"expected {_type_name(hint)}, got {value!r}", "fix the value in the config or --set")


# ------------------------------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Where the slices come from and how they are batched.

    ``root`` holds ``{train,val,test}/`` folders of fastMRI HDF5 volumes (``None``: the embedded dataset, built
    and cached on first use). ``train``/``val``/``test`` name the split folders; when ``root`` has no such
    folders its volumes are split by subject (``patient_id``, else the file name) with ``split_fractions``, in a
    fixed order that no run seed enters (:mod:`mrlearn.data.subjects`). ``contrasts`` keeps
    only volumes whose ``acquisition`` is listed (e.g. ``[CORPD_FBK]``). ``volume_fraction``/``volume_count``
    and ``slice_fraction``/``slice_count`` keep a seeded nested subset of the training volumes / slices.
    ``recon_size`` ``[h, w]`` overrides the files' recon size (the target/crop size). ``embedded``: options of the
    embedded dataset (fields of :class:`mrlearn.data.simulate.SimulationOptions`, e.g. ``{matrix: [64, 64],
    contrasts: [PD]}``), used only while ``root`` is None; each set of options is built and cached once.
    ``cache_mb``: keep up to this many MB of read slices in memory per process (0: read every time).
    """

    root: str | None = None
    train: str = "train"
    val: str = "val"
    test: str = "test"
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    contrasts: list[str] | None = None
    volume_fraction: float = 1.0
    volume_count: int | None = None
    slice_fraction: float = 1.0
    slice_count: int | None = None
    recon_size: list[int] | None = None
    embedded: dict[str, Any] | None = None
    batch_size: int = 1
    num_workers: int = 0
    cache_mb: float = 0.0


@dataclass
class TrainerConfig:
    """Lightning Trainer settings. ``precision: auto`` = bf16-mixed on CUDA with bf16 support, else 32.

    Budget and convergence: caps ``max_epochs`` (-1: none), ``max_steps`` (-1: none), ``max_time`` (seconds or
    ``"DD:HH:MM:SS"``); validation every ``val_every`` epochs or every ``val_every_n_steps`` steps;
    ``early_stopping`` (see :class:`EarlyStoppingConfig`); ``final_weights``: the weights the final evaluation uses
    (``best`` by validation, or ``last``). ``logger``: tensorboard, csv or mlflow (where installed).
    ``compile``: ``torch.compile`` the networks in place before training (:mod:`mrlearn.engine.compile`).
    """

    max_epochs: int = 1
    max_steps: int = -1
    max_time: float | str | None = None
    devices: Union[int, str] = 1
    num_nodes: int = 1  # machines; devices per machine x num_nodes processes (engine.cluster: SLURM, torchrun)
    strategy: str = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    precision: str = "auto"
    gradient_clip_val: float | None = None
    val_every: int = 1
    checkpoint_every_n_steps: int = 0
    deterministic: bool = True
    compile: bool = False  # torch.compile the networks in place (engine.compile; measured in docs/benchmarks.md)
    log_every_n_steps: int = 10
    image_every_n_epochs: int = 1
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0
    progress_bar: bool = True
    progress_every: float | None = None  # s between progress lines on stderr (0: none; null: 30; mrlearn.progress)
    val_every_n_steps: int | None = None
    early_stopping: EarlyStoppingConfig | None = None
    final_weights: Literal["best", "last"] = "best"
    logger: Literal["tensorboard", "csv", "mlflow"] = "tensorboard"


#: the named sections and their registry kinds
NAMED_SECTIONS = {"mask": "mask", "model": "model", "method": "method", "optim": "optimizer", "scheduler": "scheduler"}


@dataclass
class ExperimentConfig:
    """One experiment. Named sections are dicts ``{name: ..., **kwargs}`` validated against the registry."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    mask: dict[str, Any] = field(default_factory=lambda: {"name": "random", "accelerations": [4], "center_fractions": [0.08]})
    model: dict[str, Any] = field(default_factory=lambda: {"name": "unet"})
    method: dict[str, Any] = field(default_factory=lambda: {"name": "supervised", "loss": {"name": "l1"}})
    optim: dict[str, Any] = field(default_factory=lambda: {"name": "rmsprop", "lr": 1e-3})
    scheduler: dict[str, Any] | None = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    out_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def run_dir(self) -> Path:
        """The run folder: ``out_dir`` or ``runs/<name>`` (a ``name`` may not leave ``runs/``)."""
        from mrlearn.io import safe_child

        return Path(self.out_dir) if self.out_dir else safe_child("runs", self.name, "name")


def register_section(name: str, cls: type) -> None:
    """Let a capability add a top-level config section parsed into the dataclass ``cls`` (registry kind
    ``section``; the capability declares its module in the entry-point group ``mrlearn.section``)."""
    registry.register("section", name)(cls)


def _section_class(name: str) -> type | None:
    return registry.find("section", name)


# ------------------------------------------------------------------------------------------------- parsing


def _optional_dataclass(hint: Any) -> type | None:
    """The dataclass ``X`` of a hint ``X | None``, else None."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        classes = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return classes[0] if len(classes) == 1 else None
    return None


def _to_dataclass(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise input_error(where, f"expected a mapping, got {raw!r}", "write the section as 'key: value' lines")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise input_error(path, "unknown key", f"valid keys: {', '.join(sorted(names))}")
        hint = hints[key]
        inner = _optional_dataclass(hint)
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _to_dataclass(hint, value, path)
        elif inner is not None and value is not None:
            kwargs[key] = _to_dataclass(inner, value, path)
        else:
            check_type(value, hint, path)
            kwargs[key] = value
    return cls(**kwargs)


def _validate_named(cfg: ExperimentConfig) -> None:
    from mrlearn import registry

    for section, kind in NAMED_SECTIONS.items():
        value = getattr(cfg, section)
        if value is None:
            if section == "scheduler":
                continue
            raise input_error(section, "is required", f"give it a 'name' ({', '.join(registry.available(kind))})")
        if isinstance(value, str):
            value = {"name": value}
            setattr(cfg, section, value)
        runtime = {"method": ("model", "loss", "cfg"), "optimizer": ("params",), "scheduler": ("optimizer",)}.get(kind, ())
        if section == "method":  # its 'loss' is a sub-section, validated below
            value = {k: v for k, v in value.items() if k != "loss"}
        if section == "mask":  # fixed_per_slice says how training masks are drawn (data module), not a mask option
            value = {k: v for k, v in value.items() if k != "fixed_per_slice"}
        if section == "model":  # init names a weights file the built model starts from, not a model option
            check_init(value.get("init"))
            value = {k: v for k, v in value.items() if k != "init"}
        registry.validate(kind, value, section, runtime=runtime)
    loss = cfg.method.get("loss")
    if loss is not None:
        if isinstance(loss, str):
            cfg.method["loss"] = {"name": loss}
        registry.validate("loss", cfg.method["loss"], "method.loss")


def check_init(value: Any) -> None:
    """``model.init``: null or the path of a weights file (a state dict; read when the model is built, so a config
    stored in a checkpoint stays valid when the file has gone)."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise input_error("model.init", f"expected the path of a weights file or null, got {value!r}",
                          "e.g. --set model.init=/path/state_dict.pt")


def set_override(raw: dict[str, Any], override: str) -> None:
    """Apply ``key.path=value`` to a raw config dict (value parsed as a YAML scalar or list)."""
    if "=" not in override:
        raise input_error(f"--set {override}", "expected key.path=value", "e.g. --set model.chans=16")
    path, text = override.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise input_error(f"--set {override}", "empty key", "e.g. --set model.chans=16")
    try:
        value = yaml_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise input_error(f"--set {override}", f"cannot parse the value ({exc.__class__.__name__})",
                          "quote strings, write lists as [1, 2]") from exc
    node = raw
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def config_from_dict(raw: dict[str, Any], where: str = "config") -> ExperimentConfig:
    """Validate a raw dict (as from YAML) into an :class:`ExperimentConfig`."""
    if not isinstance(raw, dict):
        raise input_error(where, "the top level must be a mapping", "see configs/unet_demo.yaml for an example")
    core, extra = {}, {}
    names = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"extra"}
    for key, value in raw.items():
        if key in names:
            core[key] = value
            continue
        cls = _section_class(key)
        if cls is None:
            valid = sorted(names | set(registry.available("section")))
            raise input_error(f"{key}", "unknown key", f"valid keys: {', '.join(valid)}")
        extra[key] = _to_dataclass(cls, value, key)
    cfg = _to_dataclass(ExperimentConfig, core, "")
    cfg.extra = extra
    _validate_named(cfg)
    t = cfg.trainer
    for key in ("val_every", "batch_size"):
        obj = cfg.data if key == "batch_size" else t
        if getattr(obj, key) < 1:
            raise input_error(f"{'data' if key == 'batch_size' else 'trainer'}.{key}", "must be at least 1", "fix the value")
    _validate_budget(cfg)
    if cfg.data.recon_size is not None and (len(cfg.data.recon_size) != 2 or min(cfg.data.recon_size) < 1):
        raise input_error("data.recon_size", "expected [h, w] with positive sizes", "e.g. [320, 320]")
    for key in ("volume_fraction", "slice_fraction"):
        if not 0 < getattr(cfg.data, key) <= 1:
            raise input_error(f"data.{key}", "must be in (0, 1]", "fix the value")
    if cfg.data.embedded is not None:
        embedded_options(cfg.data)  # unknown or invalid simulation options are refused before any run starts
    return cfg


def embedded_options(data: DataConfig) -> Any:
    """The :class:`~mrlearn.data.simulate.SimulationOptions` of the embedded dataset ``data`` names (defaults
    overridden by ``data.embedded``; a one-line error for a key or value the simulator does not take)."""
    from mrlearn.data.simulate.options import options_from_config

    return options_from_config(data.embedded, "data.embedded")


def _validate_budget(cfg: ExperimentConfig) -> None:
    """Seed, caps, validation interval, early stopping, workers and the run name."""
    if not 0 <= cfg.seed < 2 ** 32:  # numpy's and Lightning's seed range
        raise input_error("seed", f"{cfg.seed} is outside [0, 2**32)", "use e.g. 0")
    t = cfg.trainer
    if t.max_epochs == 0 or t.max_epochs < -1:
        raise input_error("trainer.max_epochs", f"{t.max_epochs} is not at least 1 (or -1: no epoch cap)", "fix the value")
    if t.max_steps == 0 or t.max_steps < -1:
        raise input_error("trainer.max_steps", f"{t.max_steps} is not at least 1 (or -1: no step cap)", "fix the value")
    if t.max_epochs == -1 and t.max_steps == -1 and t.max_time is None and t.early_stopping is None:
        raise input_error("trainer.max_epochs", "-1 (no cap) needs another way to stop",
                          "set trainer.max_steps, trainer.max_time or trainer.early_stopping")
    if t.val_every_n_steps is not None and t.val_every_n_steps < 1:
        raise input_error("trainer.val_every_n_steps", "must be at least 1 (or null: every val_every epochs)", "fix the value")
    if isinstance(t.max_time, str) and not re.fullmatch(r"\d{1,3}:\d{2}:\d{2}:\d{2}", t.max_time):
        raise input_error("trainer.max_time", f"{t.max_time!r} is not seconds or DD:HH:MM:SS", "e.g. 3600 or '00:01:00:00'")
    if isinstance(t.max_time, (int, float)) and not isinstance(t.max_time, bool) and t.max_time <= 0:
        raise input_error("trainer.max_time", f"{t.max_time} is not a positive number of seconds", "e.g. 3600 or '00:01:00:00'")
    check_early_stopping(t.early_stopping)
    if t.checkpoint_every_n_steps < 0:
        raise input_error("trainer.checkpoint_every_n_steps", "must be 0 (never mid-epoch) or more", "fix the value")
    if t.gradient_clip_val is not None and not (math.isfinite(t.gradient_clip_val) and t.gradient_clip_val > 0):
        raise input_error("trainer.gradient_clip_val", f"{t.gradient_clip_val} is not a positive number",
                          "e.g. 1.0, or null for no clipping")
    check_every(t.progress_every, "trainer.progress_every", allow_none=True)
    for key in ("limit_train_batches", "limit_val_batches"):
        value = getattr(t, key)
        if isinstance(value, bool) or not (value > 0 if isinstance(value, int) else 0 < value <= 1):
            raise input_error(f"trainer.{key}", f"{value!r} is not a batch count >= 1 or a fraction in (0, 1]",
                              "e.g. 1.0 (all batches) or 10")
    if isinstance(t.devices, int) and not isinstance(t.devices, bool) and t.devices < 1 and t.devices != -1:
        raise input_error("trainer.devices", f"{t.devices} is not a device count (>= 1, -1 for all, or 'auto')", "e.g. 1")
    if isinstance(t.num_nodes, bool) or t.num_nodes < 1:
        raise input_error("trainer.num_nodes", f"{t.num_nodes!r} is not a node count", "e.g. 1 (this machine) or 2")
    if cfg.data.num_workers < 0:
        raise input_error("data.num_workers", f"{cfg.data.num_workers} is negative", "use 0 (load in the main process) or more")
    from mrlearn.data.checks import check_cache_mb  # numpy-only checks, loaded when a config is validated
    check_cache_mb(cfg.data.cache_mb, "data.cache_mb")
    if cfg.out_dir is None:
        cfg.run_dir()  # a name that would leave runs/ is refused here


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment (:func:`read_yaml_file`), apply ``--set`` overrides, validate and return it.

    ``path`` may also name a config shipped with mrlearn (``unet_demo`` or ``unet_demo.yaml``).
    """
    p = resolve_config_path(path)
    raw = read_yaml_file(p)
    if raw is None:
        raise input_error(p, "the config is empty (no settings, only comments or blank lines)",
                          "write the experiment's sections (see configs/unet_demo.yaml) or name a shipped config")
    if not isinstance(raw, dict):
        raise input_error(p, "the top level must be a mapping", "see configs/unet_demo.yaml for an example")
    for item in overrides:
        set_override(raw, item)
    return config_from_dict(raw)


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of one shipped in ``mrlearn/configs``."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = Path(__file__).parent / "configs" / (p.name if p.suffix else f"{p.name}.yaml")
    if shipped.is_file() and len(p.parts) == 1:
        return shipped
    raise input_error(p, "config file not found", "give a path to a YAML file or a shipped config name")


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain-data view of a config (the inverse of :func:`config_from_dict`)."""
    out = dataclasses.asdict(cfg)
    extra = out.pop("extra")
    out.update({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in cfg.extra.items()})
    del extra
    return out


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML text (loads back to an equal config)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
