"""The run folder (output_dir): what a run owns, what it never touches, and where a resumed run starts.

A run writes these names into output_dir, and nothing else: `reasonrl-run.json` (the mark of a run's folder),
`metrics.jsonl`, `completions.jsonl`, `checkpoint-N/` (and its hidden staging folders), `runs/` (TensorBoard) and,
when the user calls `save_model()`, the model files it lists in the mark. The rules:

- a new run starts in a folder that does not exist, or that holds none of those names, or (with overwrite) that
  holds an earlier run: then that run's files go, and nothing else;
- a folder holding one of those names that no run wrote (a user's own completions.jsonl) is refused, overwrite or
  not: the run would replace it;
- resuming from checkpoint-K while later checkpoints exist moves those and copies the full logs into
  `superseded-<time>/`, with a warning: the resumed timeline never mixes with the old one, and nothing is deleted;
- `save_model()` never replaces model files that no run of this folder saved.

Checks that need no model (`check_output_dir`, `check_start`) run before the model loads, so that a mistake costs
seconds; `claim` makes the changes when training starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time

from reasonrl.checkpoint import check_resume_settings, list_checkpoints, validate_checkpoint
from reasonrl.errors import CheckpointError, ConfigError

logger = logging.getLogger("reasonrl")

MARK = "reasonrl-run.json"
LOGS = ("metrics.jsonl", "completions.jsonl")
TRACKER_FOLDER = "runs"
_CHECKPOINT = re.compile(r"^\.?checkpoint-\d+(\.tmp|\.old)?$")


def check_output_dir(output_dir: str) -> None:
    """ConfigError unless a run could create and write `output_dir` (it is a folder or can become one)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConfigError(f"output_dir {output_dir} is a file; choose a folder for checkpoints and logs",
                          "output_dir")
    ancestor = os.path.abspath(output_dir)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"output_dir {output_dir} cannot be created: {ancestor} is a file; choose another folder",
                          "output_dir")
    try:  # a real write: permission bits do not tell about read-only file systems, or root
        handle, probe = tempfile.mkstemp(dir=ancestor, prefix=".reasonrl-write-test-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise ConfigError(f"output_dir {output_dir} cannot be written ({ancestor}: {error.strerror}); choose a "
                          f"folder you can write to", "output_dir") from None


def holds_run(output_dir: str) -> bool:
    """Whether `output_dir` holds a run: its mark, or (runs of earlier versions) a checkpoint or a metrics log."""
    if os.path.isfile(os.path.join(output_dir, MARK)) or list_checkpoints(output_dir):
        return True
    return _first_row_has_step(os.path.join(output_dir, "metrics.jsonl"))


def foreign_files(output_dir: str) -> list[str]:
    """Names in `output_dir` that a run would write but that are not a run's: a user's files in the way."""
    if not os.path.isdir(output_dir) or holds_run(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir)
                  if name in LOGS or name == MARK or _CHECKPOINT.match(name))


def check_start(output_dir: str, *, resume: str | None, overwrite: bool) -> None:
    """Before anything loads: may a run start (resume=None) or resume from `resume` (a checkpoint path) here?"""
    check_output_dir(output_dir)
    in_the_way = foreign_files(output_dir)
    if in_the_way:
        raise ConfigError(f"output_dir {output_dir} holds {', '.join(in_the_way)}, which no reasonrl run wrote (no "
                          f"{MARK}); a run would replace it: move it away or choose another output_dir",
                          "output_dir")
    if resume is None and holds_run(output_dir) and not overwrite:
        raise ConfigError(f"output_dir {output_dir} already holds a run; pass --resume to continue it, --overwrite "
                          f"(overwrite_output_dir=true) to start over, or choose another output_dir", "output_dir")
    if resume is not None and _parent(resume) != os.path.abspath(output_dir) and holds_run(output_dir) \
            and not overwrite:
        raise ConfigError(f"output_dir {output_dir} holds another run than the checkpoint {resume}; resume into "
                          f"that checkpoint's own folder, or choose a new output_dir", "output_dir")


def resolve_resume(output_dir: str, resume, settings: dict | None = None) -> str | None:
    """The checkpoint folder a resume option names (True or "latest": output_dir's newest), checked (its files, and
    that `settings`, the run's config as a dict, keep what its state depends on); None for no resume.

    The one place that reads `resume_from_checkpoint` / `--resume`."""
    if resume in (None, False, ""):
        return None
    if resume is True or str(resume).strip().lower() in ("latest", "true"):
        path = list_checkpoints(output_dir)[-1] if list_checkpoints(output_dir) else None
        if path is None:
            raise CheckpointError(f"nothing to resume: output_dir {output_dir} holds no checkpoint; drop --resume "
                                  f"(resume_from_checkpoint) to start a new run there")
    else:
        path = os.fspath(resume)
        if not os.path.isdir(path):
            raise CheckpointError(f"cannot resume from {path}: no such folder; give a checkpoint folder like "
                                  f"{os.path.join(output_dir, 'checkpoint-100')}, or --resume alone for the latest")
    validate_checkpoint(path)
    if settings is not None:
        check_resume_settings(path, settings)
    return path


def claim_for_run(args, dist, resume_from_checkpoint) -> str | None:
    """Make output_dir the run's, on every process of `dist`: the checkpoint folder to resume from, or None. The one
    reading of the resume option; an earlier run there is only replaced with overwrite_output_dir, later
    checkpoints of a resumed one are set aside."""
    from reasonrl import distributed

    resume = resolve_resume(args.output_dir, resume_from_checkpoint, args.to_dict())
    check_start(args.output_dir, resume=resume, overwrite=args.overwrite_output_dir)  # on every process
    distributed.barrier(dist)  # before rank 0 changes the folder
    if dist.is_main:
        claim(args.output_dir, resume=resume, overwrite=args.overwrite_output_dir)
    distributed.barrier(dist)
    return resume


def claim(output_dir: str, *, resume: str | None, overwrite: bool) -> None:
    """Make `output_dir` this run's (one process does this): check again (the folder may have changed since
    check_start), clear an earlier run when overwriting, set later checkpoints aside when resuming from an earlier
    one, and write the mark."""
    check_start(output_dir, resume=resume, overwrite=overwrite)
    os.makedirs(output_dir, exist_ok=True)
    if resume is None and holds_run(output_dir):  # overwrite (check_start refused otherwise)
        _remove_run_files(output_dir)
    elif resume is not None and _parent(resume) == os.path.abspath(output_dir):
        _set_later_checkpoints_aside(output_dir, _step_of(resume))
    if not os.path.isfile(os.path.join(output_dir, MARK)):
        _write_mark(output_dir, {"created_by": "reasonrl", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "model_files": []})


def check_model_save(folder: str) -> None:
    """ConfigError when saving a model into `folder` would replace model files that no run of it saved."""
    if not os.path.isdir(folder):
        return
    saved_here = set(_read_mark(folder).get("model_files", []))
    model_files = [name for name in os.listdir(folder) if _is_model_file(name) and name not in saved_here]
    if model_files:
        raise ConfigError(f"{folder} already holds a model ({', '.join(sorted(model_files)[:4])}) that this run did "
                          f"not save; save to another folder (save_model(output_dir=...))", "output_dir")


def record_model_save(folder: str) -> None:
    """After save_model(folder): list the model files now there in the folder's mark, as this run's."""
    mark = _read_mark(folder) or {"created_by": "reasonrl", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    mark["model_files"] = sorted(name for name in os.listdir(folder) if _is_model_file(name))
    _write_mark(folder, mark)


# ---------------------------------------------------------------- helpers

_MODEL_FILE = re.compile(r"(\.safetensors|\.bin|\.gguf|\.pt|\.pth)$|^(config|adapter_config|generation_config|"
                         r"tokenizer|tokenizer_config|special_tokens_map|chat_template)\.(json|jinja)$|^README\.md$")


def _is_model_file(name: str) -> bool:
    return bool(_MODEL_FILE.search(name))


def _first_row_has_step(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
        return isinstance(json.loads(first), dict) and "step" in json.loads(first)
    except (OSError, ValueError):
        return False


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(os.fspath(path)).rstrip(os.sep))


def _step_of(checkpoint: str) -> int:
    match = re.search(r"checkpoint-(\d+)$", os.path.abspath(checkpoint).rstrip(os.sep))
    return int(match.group(1)) if match else -1


def _read_mark(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MARK), encoding="utf-8") as handle:
            mark = json.load(handle)
        return mark if isinstance(mark, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_mark(folder: str, mark: dict) -> None:
    staging = os.path.join(folder, f".{MARK}.tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        json.dump(mark, handle, indent=1)
    os.replace(staging, os.path.join(folder, MARK))


def _remove_run_files(output_dir: str) -> None:
    """--overwrite: the earlier run's logs, checkpoints, tracker folder and saved model files; nothing else."""
    mark = _read_mark(output_dir)
    names = [*LOGS, *mark.get("model_files", []), MARK]
    if mark:
        names.append(TRACKER_FOLDER)
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name in names or (_CHECKPOINT.match(name) and os.path.isdir(path)):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _set_later_checkpoints_aside(output_dir: str, step: int) -> None:
    """Resuming from checkpoint-`step`: checkpoints after it and the logs' later rows belong to another timeline."""
    later = [path for path in list_checkpoints(output_dir) if _step_of(path) > step]
    if not later:
        return
    aside = os.path.join(output_dir, f"superseded-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(aside, exist_ok=False)
    for name in LOGS:  # copies: the resumed run keeps the rows up to its step
        if os.path.isfile(os.path.join(output_dir, name)):
            shutil.copy2(os.path.join(output_dir, name), os.path.join(aside, name))
    for path in later:
        os.rename(path, os.path.join(aside, os.path.basename(path)))
    logger.warning("resuming from checkpoint-%d: the later %s and the logs as they were are moved to %s (nothing "
                   "deleted)", step, ", ".join(os.path.basename(p) for p in later), aside)


def ensure_not_run_file(path: str, output_dir: str, what: str) -> None:
    """A dataset file that the run would write (e.g. output_dir/completions.jsonl): refused."""
    if os.path.abspath(os.path.dirname(path)) == os.path.abspath(output_dir) and os.path.basename(path) in LOGS:
        raise ConfigError(f"{what} {path} is a file this run writes in output_dir; move the data elsewhere or choose "
                          f"another output_dir", "output_dir")
