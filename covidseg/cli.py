"""The ``covidseg`` command: ``covidseg fit|evaluate|predict|export [options]``.

Each subcommand is the ``main`` of its module (``python -m covidseg.<cmd>`` runs the same code)
and takes ``--help``, ``--config FILE`` and ``--print_config``.
"""

from __future__ import annotations

import importlib
import sys
import warnings

COMMANDS = {
    "fit": "train a U-Net (LightningCLI), then evaluate its best checkpoint on the test split",
    "evaluate": "score a checkpoint, ONNX model or fold ensemble on a split or a data set; write a report",
    "predict": "segment lesions in image files, folders, NIfTI volumes, DICOM series and cohort lists",
    "merge": "merge the summary parts of sharded or resumed predict runs into summary.csv; list missing and failed studies",
    "export": "export a checkpoint to ONNX, checked against PyTorch",
    "models": "list the built-in models with their cards (what --ckpt NAME uses; predict's default)",
}
MODULES = {"models": "covidseg.models"}  # other commands: covidseg.<command>


def usage() -> str:
    lines = ["usage: covidseg {fit,evaluate,predict,merge,export,models} [options]", "", "COVID-19 CT lesion segmentation.", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    lines += ["", "covidseg COMMAND --help shows the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    """Dispatches to ``covidseg.<command>.main``; returns what it returns (an exit status or results)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown command {command!r}", file=sys.stderr)
        raise SystemExit(2)
    # sys.argv stays as typed (``covidseg fit ...``): Lightning's DDP launcher starts the other
    # ranks by re-running it. LightningCLI warns when it also gets ``args``; that is intended here.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return importlib.import_module(MODULES.get(command, f"covidseg.{command}")).main(rest)


def console() -> None:
    """The console-script entry point: ``main``'s integer result is the exit status."""
    result = main()
    raise SystemExit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    console()
