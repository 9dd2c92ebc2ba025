"""The model-input protocol: what a reconstruction network consumes, declared by its class.

A network class sets ``input_kind``:

``"image"``   ``model(x)``: real ``[B, in_chans, H, W]`` -> ``[B, out_chans, H, W]`` (the fastMRI U-Net, the SSDU
              ResNet used on its own); complex images travel as 2 channels (real, imaginary)
``"kspace"``  ``model(kspace, mask, sens_maps)``: masked k-space ``[B, C, H, W]`` complex, its mask and maps
              ``[B, C, H, W]`` or None -> complex image ``[B, H, W]`` (the physics-guided unrolled networks), or a
              real magnitude ``[B, H, W]`` (fastMRI's E2E-VarNet returns the RSS image and estimates its own maps):
              supervised training and inference take either (they use the magnitude); SSDU needs a complex image

A ``torch.nn.Module`` that declares nothing is an image network, so any plain image-to-image module works unchanged.
"""

from __future__ import annotations

from torch import nn

from mrlearn.errors import input_error

INPUT_KINDS = ("image", "kspace")


def input_kind(model: nn.Module) -> str:
    """``"image"`` or ``"kspace"``: the declared ``input_kind`` of ``model`` (or of the module a wrapper holds)."""
    kind = getattr(model, "input_kind", None)
    if kind is None and isinstance(getattr(model, "module", None), nn.Module):  # DistributedDataParallel & co.
        kind = getattr(model.module, "input_kind", None)
    kind = "image" if kind is None else kind
    if kind not in INPUT_KINDS:
        raise input_error("model", f"{type(model).__name__}.input_kind is {kind!r}", f"declare one of: {', '.join(INPUT_KINDS)}")
    return kind


def require_input(model: nn.Module, method: str, kinds: tuple[str, ...], image_chans: int | None = None) -> None:
    """Refuse, with one line, a model whose ``input_kind`` is not in ``kinds`` or (for image models, when
    ``image_chans`` is given) whose ``in_chans`` / ``out_chans`` differ from it: a method states what it feeds."""
    kind = input_kind(model)
    name = type(model).__name__
    if kind not in kinds:
        need = "k-space networks (e.g. model.name: unrolled or varnet)" if kinds == ("kspace",) else \
            "image networks (e.g. model.name: unet)"
        raise input_error("method", f"{method!r} trains {need}; {name} takes {kind}",
                          "choose a model of that kind, or the method for this model (supervised for images, "
                          "supervised_kspace for k-space networks)")
    if kind == "image" and image_chans is not None:
        got = (getattr(model, "in_chans", None), getattr(model, "out_chans", None))
        if None not in got and got != (image_chans, image_chans):
            raise input_error("model", f"{method!r} feeds {image_chans}-channel images; {name} has in_chans "
                              f"{got[0]}, out_chans {got[1]}", f"set model.in_chans={image_chans} model.out_chans={image_chans}")
