"""The flags evaluate, predict and export share, and their one validator each.

Every entry point parses with jsonargparse (``fit`` through LightningCLI), so all of them take
``--config FILE`` and ``--print_config`` and spell a thing the same way everywhere:
``--ckpt``, ``--data.root``, ``--output``, ``--batch_size``, ``--threshold``, ``--tta``, ``--device``;
data settings are ``--data.*`` as in ``fit`` (``--data.window``, ``--data.case_regex``). A boolean
flag typed bare (``--probabilities``) means true; ``--probabilities true|false`` works too.

Where two commands grew two spellings of one thing, both work in every command (``ALIASES``):
``--ckpt``/``--ckpt_path``, ``--threshold``/``--model.threshold``, ``--tta``/``--model.tta``,
``--data.window``/``--window``, ``--data.case_regex``/``--case_regex``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from jsonargparse.typing import PositiveInt

from covidseg.errors import CovidSegError
from covidseg.model.card import check_threshold

Device = Literal["cpu", "cuda"]


# spelling -> the spelling fit's LightningCLI knows (its model and data flags are class arguments, so
# fit renames these in argv; fit's --ckpt_path/--ckpt and the other commands declare both spellings)
FIT_ALIASES = {"--threshold": "--model.threshold", "--tta": "--model.tta", "--window": "--data.window",
               "--case_regex": "--data.case_regex"}  # fmt: skip
_BARE_TRUE = {"--model.tta"}  # a boolean given bare means true, as in the other commands


def rename_flags(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """``argv`` with each alias (``--tta``, ``--tta=x``) spelled as its target; a bare boolean
    target gets ``true``."""
    out: list[str] = []
    for k, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        target = aliases.get(flag)
        if target is None:
            out.append(arg)
            continue
        out.append(target + eq + value)
        bare = not eq and (k + 1 == len(argv) or argv[k + 1].startswith("--"))
        if bare and target in _BARE_TRUE:
            out.append("true")
    return out


def check_device(device: str | None) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        raise CovidSegError("--device cuda: no CUDA device is available")
    return device


class Parser(ArgumentParser):
    """jsonargparse's parser, with bare boolean flags: an option typed ``bool`` (or
    ``bool | None``) takes an optional value, and alone means true (``--overwrite``)."""

    def add_argument(self, *args, **kwargs):
        if kwargs.get("type") in (bool, bool | None) and "nargs" not in kwargs and "action" not in kwargs:
            kwargs.update(nargs="?", const=True)
        return super().add_argument(*args, **kwargs)


def parser(prog: str, doc: str) -> ArgumentParser:
    """A parser with ``--config`` (and jsonargparse's ``--print_config``); ``doc``'s first
    paragraph is the description, the rest the epilog."""
    head, _, rest = doc.partition("\n\n")
    p = Parser(prog=prog, description=head, epilog=rest or None, exit_on_error=True)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options (flags given after it override it)")
    return p


def add_model(p: ArgumentParser, many: bool = True, builtin_default: bool = False) -> None:
    """``--ckpt``: files, or the name of a built-in model (``covidseg models``); with
    ``builtin_default`` it may be left out, and the built-in ``reference`` model is used."""
    if many:
        text = "covidseg .ckpt or exported .onnx, or a built-in model's name (covidseg models); a list is averaged (fold ensemble)"
        if builtin_default:
            p.add_argument("--ckpt", "--ckpt_path", type=list[str] | str | None, default=None, help=text + "; default: the built-in model 'reference'")
        else:
            p.add_argument("--ckpt", "--ckpt_path", type=list[str] | str, required=True, help=text)
    else:
        p.add_argument("--ckpt", "--ckpt_path", type=str, required=True, help="covidseg checkpoint (.ckpt)")


def add_inference(p: ArgumentParser, auto_threshold: bool = False) -> None:
    """``--threshold``, ``--tta``, ``--batch_size`` and ``--device``."""
    if auto_threshold:
        p.add_argument("--threshold", "--model.threshold", type=float | Literal["auto"] | None, default=None,
                       help="lesion where probability >= threshold, in (0, 1); default: the model's; auto: tune it (see above)")  # fmt: skip
    else:
        p.add_argument("--threshold", "--model.threshold", type=float | None, default=None, help="lesion where probability >= threshold, in (0, 1); default: the model's")
    p.add_argument("--tta", "--model.tta", type=bool | None, default=None, help="flip test-time augmentation (default: the model's setting)")
    p.add_argument("--batch_size", type=PositiveInt, default=16, help="slices per forward pass")
    p.add_argument("--device", type=Device | None, default=None, help="default: cuda when available")


def model_paths(value) -> list[str]:
    """``--ckpt`` as model files: built-in model names (``reference``) become their packaged
    files, announced in one line; ``None`` is the default built-in model."""
    from covidseg.model import pretrained

    names = as_list(value) or [pretrained.DEFAULT]
    paths = []
    for name in names:
        if pretrained.is_name(name) and not Path(name).exists():
            path = pretrained.resolve(name)
            print(pretrained.describe(name, path, pretrained.card(path)))
            paths.append(str(path))
        else:
            paths.append(name)
    return paths


def as_list(value) -> list[str]:
    """A flag typed ``list[str] | str`` as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def checked(cfg) -> None:
    """Validates the shared values of a parsed namespace (once, here)."""
    threshold = cfg.get("threshold")
    if threshold is not None and threshold != "auto":
        check_threshold(threshold)
    check_device(cfg.get("device"))
