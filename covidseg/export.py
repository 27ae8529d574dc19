"""Export a checkpoint to ONNX for deployment, and check the export against PyTorch.

    covidseg export --ckpt best.ckpt --output model.onnx [--opset 18]
    covidseg export --ckpt reference --output reference.onnx      # a built-in model by name

The ONNX model maps input ``image`` (float32 ``[batch, 1, H, W]``, preprocessed as in training)
to output ``probability`` (sigmoid included, same shape; with a lung output, channel 1 holds the
lungs) and carries the model card as metadata, so ``covidseg predict --ckpt model.onnx`` treats
it exactly like the checkpoint. Before the file is put in place, onnxruntime runs it on random
inputs; if any output differs from PyTorch by more than ``1e-3`` nothing is written and the
command exits with status 2 (``covidseg.model.onnx``).
"""

from __future__ import annotations

from pathlib import Path

from covidseg import options
from covidseg.errors import user_errors
from covidseg.model.onnx import CHECK_BATCH_SIZES, DEFAULT_OPSET, MAX_ABS_DIFF, export_onnx


def build_parser():
    p = options.parser("covidseg export", __doc__)
    options.add_model(p, many=False)
    p.add_argument("--output", type=str, required=True, help="ONNX file to write (.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    return p


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0 (errors exit with 2)."""
    args = build_parser().parse_args(argv)
    (ckpt,) = options.model_paths(args.ckpt)  # built-in names (reference) as in predict and evaluate
    diff = export_onnx(ckpt, args.output, args.opset)
    size_mb = Path(args.output).stat().st_size / 1e6
    print(f"max |onnxruntime - pytorch| = {diff:.2e} (batch sizes {', '.join(map(str, CHECK_BATCH_SIZES))}; limit {MAX_ABS_DIFF:g})")
    print(f"wrote {args.output} ({size_mb:.1f} MB, opset {args.opset})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
