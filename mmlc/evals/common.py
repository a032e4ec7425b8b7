"""Helpers every resumable, sharded eval shares (``mmlc eval mmdu``, ``mmlc eval niavh``): atomic JSON
files, sharding through accelerate, CUDA out-of-memory handling, and the ``python -m`` entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from mmlc.errors import ConfigError, MmlcError


def warn(message: str) -> None:
    print(f"mmlc: warning: {message}", file=sys.stderr, flush=True)


def write_json(path: Path, data) -> None:
    """Write ``data`` to ``path`` atomically (a per-process, per-thread temporary file, then rename)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path):
    """The JSON of ``path``, or None when absent; a broken file is reported and treated as absent."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warn(f"{path}: cannot be read ({err}); it will be redone")
        return None


def shard_items(items: list, index: int, count: int) -> list:
    """Item i goes to process ``i % count``."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard ({index}, {count}): need 0 <= index < count")
    return [item for i, item in enumerate(items) if i % count == index]


def distributed():
    """(process_index, num_processes, barrier, device) from accelerate, or a single process."""
    try:
        from accelerate import PartialState
    except ImportError:  # accelerate is a dependency, but the evals need it only to shard
        return 0, 1, (lambda: None), None
    import torch

    # cpu=True where there is no GPU: ``torchrun``/``accelerate launch`` processes then shard over gloo
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone, state.device


def oom_errors() -> tuple:
    import torch

    err = getattr(torch.cuda, "OutOfMemoryError", None)
    return (err,) if err is not None else ()


def empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_cli(add_args, command, prog: str, doc: str | None, argv=None) -> int:
    """``python -m mmlc.evals.X``: parse with ``add_args``, run ``command``; user errors exit 2."""
    parser = add_args(argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        return command(args)
    except MmlcError as err:
        print(f"mmlc: error: {err}", file=sys.stderr)
        return 2
