"""The model card: what a trained covidseg model carries and needs at inference, defined once.

A ``ModelCard`` travels with every model: in a checkpoint as the LightningModule's
hyper-parameters (``LitUNet`` takes each field as an argument; ``covidseg fit`` links the data
fields from ``data.*``, see ``FIT_LINKS``), and in an ONNX file as ``covidseg.*`` metadata. One
pair of functions writes and reads each form (``write_card``/``read_card`` for checkpoint
dicts, ``card_to_onnx``/``card_from_onnx`` for ONNX metadata); the predictor, ``covidseg
export``, ``evaluate --threshold auto`` and the built-in models (whose own card adds training
provenance on top, ``covidseg.model.pretrained``) all go through them. Checkpoints and ONNX
files written before a field existed read as its default: the one place that knows the history.

The lungs, end to end: ``data.lung_masks`` reads the lung masks a source has (``Sample.lung_mask``,
batches' ``lungs``); the model then learns a second output channel, ``lung_output`` on the
card; ``covidseg predict --lungs`` writes it (``*_lungs`` files) and every ``lung_*`` column of
the outputs (lung pixels, involvement, severity) is computed from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Literal

from covidseg.data.classes import CLASS_NAMES
from covidseg.data.io import Normalization
from covidseg.data.volumes import LUNG_WINDOW
from covidseg.errors import CovidSegError

ONNX_PREFIX = "covidseg."

# (data argument, card field, when): what ``covidseg fit`` links from the DataModule into the
# model, so that it travels in every checkpoint. ``intensity`` is resolved from the data by the
# DataModule, hence linked once it exists.
FIT_LINKS = (
    ("data.image_size", "image_size", "parse"),
    ("data.normalization", "normalization", "parse"),
    ("data.intensity", "intensity", "instantiate"),
    ("data.window", "window", "parse"),
    ("data.lesion_labels", "lesion_labels", "parse"),
    ("data.patch_size", "patch_size", "parse"),
    ("data.foreground_fraction", "foreground_fraction", "parse"),
    ("data.lung_masks", "lung_output", "parse"),
)

# (data argument, card field, when, compute): links whose value the model takes in another form:
# the data's per-source class mapping -> the classes the model outputs.
FIT_COMPUTED_LINKS = (("data.lesion_classes", "classes", "parse", lambda spec: list(CLASS_NAMES) if spec else None),)

# Fields that only record how the model was trained or where it operates: models that differ in
# them can still be averaged (the operating point is averaged, the rest is a record).
RECORD_FIELDS = ("threshold", "tta", "patch_size", "foreground_fraction", "lesion_labels", "volume_threshold")


def check_threshold(value: float, name: str = "--threshold") -> float:
    """A lesion threshold is a probability strictly between 0 and 1 (0 would mark every pixel,
    1 almost none); raises ``CovidSegError`` otherwise."""
    if not 0.0 < float(value) < 1.0:
        raise CovidSegError(f"{name} {value}: expected a probability in (0, 1)")
    return float(value)


@dataclass(frozen=True)
class ModelCard:
    """What a model needs besides its weights.

    Attributes:
        image_size: preprocessing: every slice is resized to ``S x S``; inference always runs
            on the whole slice at this size.
        normalization: intensity rule of ``io.normalize_intensity`` (``auto``, ``dtype``, ``minmax``).
        intensity: the intensity protocol of training: ``image`` (8/16-bit slice exports) or
            ``hu_window`` (HU volumes through ``window``).
        window: ``(center, width)`` in HU that turns a volume slice into an 8-bit image.
        lesion_labels: the label mapping of the training masks (values that are lesion);
            ``None``: binary masks.
        threshold: the operating point: lesion where the probability is ``>= threshold``.
        tta: flip test-time augmentation (the four views of ``unet.TTA_FLIPS``).
        patch_size, foreground_fraction: how training sampled patches, for the record
            (``None``: whole slices).
        lung_output: a second output channel with lung probabilities.
        volume_threshold: the operating point for volumes (lesion mL, involvement, grade): the
            lesion where the probability is ``>= volume_threshold``, inside the anatomy stage's
            lesion region; ``None``: ``threshold``. The Dice-optimal threshold draws the mask
            well but underestimates lesion volume; this one is chosen on validation patients for
            the involvement error (``covidseg.evaluation.volume_rule``).
        classes: the lesion classes the model tells apart (``("ggo", "consolidation")``,
            ``covidseg.model.split``: one more channel, the last); ``None``: binary lesion only.
            Channel 0 is the lesion (their union) either way.
    """

    image_size: int
    normalization: Normalization = "auto"
    intensity: Literal["image", "hu_window"] = "image"
    window: tuple[float, float] = LUNG_WINDOW
    lesion_labels: tuple[int, ...] | None = None
    threshold: float = 0.5
    tta: bool = False
    patch_size: int | None = None
    foreground_fraction: float = 0.0
    lung_output: bool = False
    volume_threshold: float | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        # one canonical form, whatever the source (YAML lists, strings of ONNX metadata)
        object.__setattr__(self, "window", tuple(float(v) for v in self.window))
        if self.lesion_labels is not None:
            object.__setattr__(self, "lesion_labels", tuple(int(v) for v in self.lesion_labels))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(v) for v in self.classes) or None)

    @property
    def channels(self) -> int:
        """Output channels: lesion, lungs (``lung_output``), the class split (``classes``)."""
        return 1 + int(self.lung_output) + int(bool(self.classes))

    @property
    def burden_threshold(self) -> float:
        """The threshold volumes are measured at (``volume_threshold``, else ``threshold``)."""
        return self.threshold if self.volume_threshold is None else self.volume_threshold

    def runs_like(self, other: "ModelCard") -> bool:
        """Same preprocessing and outputs, so that the two models can be averaged."""
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name not in RECORD_FIELDS)

    def as_dict(self) -> dict:
        """Plain values (lists, not tuples): for hyper-parameters, JSON and YAML."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def card_from_hparams(hp: Mapping) -> ModelCard:
    """The card of a model's hyper-parameters; a field a model was saved without takes its
    default (checkpoints before patches, intensity protocols, lung outputs or label mappings)."""
    defaults = ModelCard(image_size=int(hp["image_size"]))
    values = {f.name: hp.get(f.name, getattr(defaults, f.name)) for f in fields(ModelCard)}
    values.update(
        image_size=int(values["image_size"]),
        threshold=float(values["threshold"]),
        tta=bool(values["tta"]),
        lung_output=bool(values["lung_output"]),
        foreground_fraction=float(values["foreground_fraction"] or 0.0),
        patch_size=None if values["patch_size"] is None else int(values["patch_size"]),
        volume_threshold=None if values["volume_threshold"] in (None, "None", "") else float(values["volume_threshold"]),
    )
    return ModelCard(**values)


def read_card(ckpt: dict) -> ModelCard:
    """The card of a loaded checkpoint (``checkpoint.read_checkpoint``)."""
    return card_from_hparams(ckpt["hyper_parameters"])


def write_card(ckpt: dict, card: ModelCard) -> dict:
    """A copy of a loaded checkpoint that carries ``card`` (the input is left unchanged)."""
    return {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], **card.as_dict()}}


def _text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def card_to_onnx(card: ModelCard) -> dict[str, str]:
    """The card as ONNX metadata: ``covidseg.FIELD`` -> text."""
    return {ONNX_PREFIX + k: _text(v) for k, v in asdict(card).items()}


def card_from_onnx(meta: Mapping[str, str], source: str) -> ModelCard:
    """The card of an exported model's metadata (``card_to_onnx``; older exports lack some
    fields, which take their defaults). Raises ``CovidSegError`` for an ONNX file without one."""
    get = {k.removeprefix(ONNX_PREFIX): v for k, v in meta.items() if k.startswith(ONNX_PREFIX)}
    if "image_size" not in get:
        raise CovidSegError(f"{source}: ONNX model has no covidseg metadata; export it with covidseg export")

    def numbers(key, cast):
        text = get.get(key, "None")
        return None if text in ("None", "") else tuple(cast(v) for v in text.split(","))

    hp = {k: v for k, v in get.items() if k in {f.name for f in fields(ModelCard)}}
    hp.update(tta=get.get("tta") == "True", lung_output=get.get("lung_output") == "True", patch_size=None if get.get("patch_size", "None") == "None" else get["patch_size"])
    hp["window"] = numbers("window", float) or LUNG_WINDOW
    hp["lesion_labels"] = numbers("lesion_labels", int)
    hp["classes"] = None if get.get("classes", "None") in ("None", "") else tuple(get["classes"].split(","))
    return card_from_hparams(hp)
