"""Merge the summary parts of a cohort's predict runs into ``summary.csv``.

    covidseg merge OUTPUT [--viewer true]

Reads ``OUTPUT/cohort.json`` (the studies every shard was given) and every summary in OUTPUT
(``summary.part-K-of-N.csv`` of each shard, ``summary.csv`` of a single or resumed run), writes
``summary.csv`` with one row per study in cohort order (and ``cases.csv`` when the run grouped
images with ``--data.case_regex``), and names the studies that failed or that no shard has
finished. The last shard of a run does the same on its own; this is for a shard that was
stopped, or to see where a cohort stands. Exit status 0 when every study is there and ok, 1 otherwise.
"""

from __future__ import annotations

from pathlib import Path

from covidseg import options
from covidseg.errors import CovidSegError, user_errors
from covidseg.metrics.severity import write_cases
from covidseg.prediction.journal import COHORT, merge, read_cohort, sources
from covidseg.prediction.cases import CASES, cases_of
from covidseg.prediction.staging import remove_leftovers
from covidseg.prediction.summary import SUMMARY_FIELDS


def build_parser():
    p = options.parser("covidseg merge", __doc__)
    p.add_argument("output", type=str, help="the --output folder of the predict runs")
    p.add_argument("--viewer", type=bool, default=False, help="also rebuild index.html and viewer/ from the finished studies' outputs (covidseg.prediction.viewer_rebuild)")
    return p


@user_errors
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0: every study ok)."""
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    cohort = read_cohort(output)
    if cohort is None:
        raise CovidSegError(f"{output / COHORT}: not found or unreadable; is {output} the --output of covidseg predict?")
    if not sources(output):
        raise CovidSegError(f"{output}: no summary.csv or summary.part-K-of-N.csv to merge")
    merged = merge(output, SUMMARY_FIELDS)
    if cohort.get("case_regex"):
        write_cases(output / CASES, cases_of(merged.rows, cohort["case_regex"]))
    print(merged.line(output))
    if args.viewer:
        from covidseg.prediction.viewer_rebuild import rebuild

        print(f"viewer: {rebuild(output, merged.rows, cohort)}" + (f" ({len(merged.missing)} studies not finished yet are not in it)" if merged.missing else ""))
    if not merged.missing:
        remove_leftovers(output)  # what killed processes left
    return 1 if merged.missing or merged.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
