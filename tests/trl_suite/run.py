"""Run TRL's GRPO trainer tests against TRL and against reasonrl, and compare.

    python tests/trl_suite/run.py                   # both implementations, the table, results.md
    python tests/trl_suite/run.py --impl reasonrl   # reasonrl alone, compared with the recorded TRL results
    python tests/trl_suite/run.py -k loss_types     # a subset (pytest's -k)

The test file is TRL's own (upstream/test_grpo_trainer.py, pinned in upstream/SOURCE.md), run unchanged: conftest.py
swaps in reasonrl's GRPOTrainer/GRPOConfig, and the hub's tiny models and zen dataset are local stand-ins
(local_hub.py, built once into --hub). A test is in scope when scope.py does not exclude it and TRL does not skip it;
the ones TRL passes are the measure: reasonrl's failures among them are listed, each with its reason, in
known_failures.txt. The exit status is 1 when reasonrl fails a test that TRL passes and the file does not list, or
passes one it lists (so the list stays true).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEST_FILE = HERE / "upstream" / "test_grpo_trainer.py"
KNOWN_FAILURES = HERE / "known_failures.txt"
TRL_RESULTS = HERE / "trl_results.json"  # TRL's outcomes, recorded by the last run with --impl trl or both


def default_hub() -> Path:
    """Under the virtualenv (kept across sessions, like tests/conftest.py's converted model), keyed by the builder's
    source, so that a change to the stand-ins rebuilds them."""
    import hashlib

    key = hashlib.sha1((HERE / "local_hub.py").read_bytes()).hexdigest()[:12]
    root = Path(sys.prefix) / "reasonrl-test-models"
    if not os.access(sys.prefix, os.W_OK):
        root = Path(os.environ.get("TMPDIR", "/tmp"))
    return root / f"trl-suite-hub-{key}"


def build_hub(hf_home: Path) -> None:
    sys.path.insert(0, str(HERE.parent))
    from trl_suite import local_hub

    local_hub.build(hf_home / "hub")


def run_pytest(impl: str, hf_home: Path, results: Path, selection: str | None, quiet: bool,
               skip: list[str] = ()) -> None:
    """pytest on the upstream file for `impl`; each test's outcome is appended to `results` (JSON lines) as it
    ends (conftest.py), so that a stopped run keeps what it measured. `skip`: test ids not to run again."""
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRL_SUITE_IMPL=impl, TRL_SUITE_RESULTS=str(results),
               TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "pytest", str(TEST_FILE), "-q", "-p", "no:cacheprovider", "-rN",
               "-W", "ignore::DeprecationWarning"]
    if selection:
        command += ["-k", selection]
    for test in skip:
        command += ["--deselect", f"{TEST_FILE.relative_to(REPO)}::{test}"]
    output = subprocess.DEVNULL if quiet else None
    subprocess.run(command, cwd=REPO, env=env, stdout=output, stderr=output)


def outcomes(results: Path) -> dict[str, tuple[str, str]]:
    """test id (Class::test[params]) -> (passed | failed | skipped, a one-line message), from run_pytest's lines."""
    found = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            record = json.loads(line)
            if found.get(record["test"], ("",))[0] != "failed":  # a teardown error after a pass still fails it
                found[record["test"]] = (record["status"], record["message"])
    return found


def read_known_failures() -> dict[str, str]:
    known = {}
    for line in KNOWN_FAILURES.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            test, _, reason = line.partition(" ")
            known[test] = reason.strip()
    return known


def compare(trl: dict, ours: dict, known: dict[str, str]) -> dict:
    """The measure: of the in-scope tests TRL passes, those reasonrl passes. In scope: not skipped for TRL and not
    excluded by scope.py as it is now (TRL's outcomes may have been recorded under an older scope.py)."""
    from trl_suite.scope import out_of_scope_reason

    in_scope = sorted(t for t, (status, _) in trl.items() if status != "skipped" and not out_of_scope_reason(t))
    trl_passes = [t for t in in_scope if trl[t][0] == "passed"]
    ran = [t for t in trl_passes if t in ours]
    ours_passes = [t for t in ran if ours[t][0] == "passed"]
    failures = [t for t in ran if ours[t][0] != "passed"]
    return {
        "in_scope": in_scope, "trl_passes": trl_passes, "reasonrl_ran": ran, "reasonrl_passes": ours_passes,
        "reasonrl_failures": failures,
        "unexpected_failures": [t for t in failures if t not in known],
        "stale_known_failures": [t for t in known if t in ours_passes],
        "trl_failures": [t for t in in_scope if trl[t][0] == "failed"],
        "skipped": sorted(t for t in trl if t not in in_scope),
    }


def write_markdown(path: Path, trl: dict, ours: dict, known: dict, summary: dict) -> None:
    from trl_suite.scope import out_of_scope_reason

    lines = ["# TRL's GRPO trainer tests: TRL 1.16 and reasonrl, side by side",
             "", "Written by `python tests/trl_suite/run.py` (do not edit by hand).", "",
             f"- in scope (not excluded by scope.py, not skipped for TRL): {len(summary['in_scope'])}",
             f"- TRL passes: {len(summary['trl_passes'])} of {len(summary['in_scope'])}",
             f"- not run on TRL yet: {len(set(ours) - set(trl))} (see the table)",
             f"- reasonrl passes: {len(summary['reasonrl_passes'])} of the {len(summary['reasonrl_ran'])} TRL passes",
             "",
             "| test | TRL | reasonrl | why reasonrl fails (known_failures.txt) or why skipped |",
             "| --- | --- | --- | --- |"]
    for test in sorted(set(trl) | set(ours)):
        trl_status, trl_message = trl.get(test, ("not run", ""))
        our_status, our_message = ours.get(test, ("not run", ""))
        note = known.get(test, "")
        if test in summary["skipped"] and trl_status != "skipped":  # excluded since TRL's outcome was recorded
            note = f"out of scope: {out_of_scope_reason(test)}"
        elif trl_status == "skipped":
            note = trl_message
        elif trl_status == "not run":
            note = f"TRL not run yet (hours on 2 cores: run.py --impl trl --resume); reasonrl: {our_message or note}"
        elif trl_status == "failed":
            note = f"TRL fails: {trl_message}"
        elif our_status == "failed" and not note:
            note = f"(unlisted) {our_message}"
        lines.append(f"| `{test}` | {trl_status} | {our_status} | {note.replace('|', '/')} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=["both", "trl", "reasonrl"], default="both")
    parser.add_argument("-k", dest="selection", help="pytest -k expression: run a subset")
    parser.add_argument("--hub", type=Path, default=None, help="where the local hub stand-ins are built (HF_HOME)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "reasonrl-trl-suite")
    parser.add_argument("--markdown", type=Path, default=HERE / "results.md",
                        help="the per-test table (written only for a full run)")
    parser.add_argument("--quiet", action="store_true", help="hide pytest's output")
    parser.add_argument("--resume", action="store_true",
                        help="keep the outcomes a stopped run left in --out and run only the other tests")
    args = parser.parse_args(argv)

    hub = args.hub or default_hub()
    build_hub(hub)
    args.out.mkdir(parents=True, exist_ok=True)
    trl = json.loads(TRL_RESULTS.read_text()) if TRL_RESULTS.is_file() else {}
    ours = {}
    for impl in (["trl", "reasonrl"] if args.impl == "both" else [args.impl]):
        start = time.perf_counter()
        lines = args.out / f"{impl}.jsonl"
        if not args.resume:
            lines.unlink(missing_ok=True)
        run_pytest(impl, hub, lines, args.selection, args.quiet, skip=sorted(outcomes(lines)))
        results = outcomes(lines)
        print(f"{impl}: {len(results)} tests in {time.perf_counter() - start:.0f} s")
        if impl == "trl":
            trl = {**trl, **results} if args.selection else results
            TRL_RESULTS.write_text(json.dumps(trl, indent=1, sort_keys=True) + "\n")
        else:
            ours = results
    if not ours:
        return 0
    if not trl:
        print("no TRL results recorded: run with --impl trl (or both) first")
        return 1
    known = read_known_failures()
    summary = compare(trl, ours, known)
    if not args.selection:
        write_markdown(args.markdown, trl, ours, known, summary)
    print(f"in scope: {len(summary['in_scope'])}; TRL passes {len(summary['trl_passes'])}; reasonrl passes "
          f"{len(summary['reasonrl_passes'])} of the {len(summary['reasonrl_ran'])} TRL passes that ran")
    for test in summary["unexpected_failures"]:
        print(f"UNEXPECTED FAILURE {test}: {ours[test][1]}")
    for test in summary["stale_known_failures"]:
        print(f"NOW PASSES (remove it from known_failures.txt) {test}")
    return 1 if summary["unexpected_failures"] or summary["stale_known_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
