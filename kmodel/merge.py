"""Sharded predictions merged into one file, checked first.

``kmodel predict ... --rows START:STOP`` (or ``--shard K/N``) writes one shard; its root
attributes record the rows it covers (``rows_start``, ``rows_stop`` of ``input_rows``).
Shards merge only if they come from one model, spec, weights, env and input, are each
complete, and cover every row of the input exactly once. The merged datasets equal an
unsharded run's when the shards were cut at multiples of the batch size (``--shard`` does).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmodel import _lock
from kmodel._fs import check_input_file, guard_output, tmp_sibling, write_error
from kmodel.errors import InputSchemaError, OutputNotWritableError, ShardError
from kmodel.io import hdf5

#: what every shard of one prediction must share
SAME = ("model", "model_version", "spec_sha256", "code_sha256", "weights_sha256",
        "lock_sha256", "env_key", "kmodel_version", "input_sha256", "input_rows", "batch_size")


def _shard(path: Path) -> tuple[dict[str, Any], hdf5.Schema]:
    """A shard's attributes and /preds layout, checked against what they claim."""
    check_input_file(path)
    written_by = "merge takes files written by `kmodel predict --rows` or `--shard`"
    try:
        attrs = hdf5.read_attrs(path)
        layout, rows = hdf5.describe(path, "preds")
    except (OSError, hdf5.LayoutError) as e:
        raise InputSchemaError(f"{path}: not a kmodel prediction file ({e}); {written_by}"
                               ) from None
    missing = [k for k in (*SAME, "rows_start", "rows_stop", "input_signature")
               if k not in attrs]
    if missing:
        raise ShardError(f"{path}: no {missing[0]} attribute; {written_by}")
    if not attrs.get(hdf5.COMPLETE):
        raise ShardError(f"{path} is not complete; finish it with `kmodel predict ... "
                         "--resume`")
    try:
        start, stop, total = (int(attrs[k]) for k in ("rows_start", "rows_stop", "input_rows"))
        done = int(attrs.get(hdf5.ROWS_DONE, -1))
    except (TypeError, ValueError):
        raise ShardError(f"{path}: its row range attributes are not whole numbers; "
                         f"{written_by}") from None
    if not 0 <= start <= stop <= total or rows != stop - start or done != rows or not layout:
        raise ShardError(f"{path} holds {rows} rows with {len(layout)} output(s) but records "
                         f"rows {start}:{stop} of {total} ({done} written); predict that "
                         "shard again")
    return attrs, layout


def check(shards: Sequence[Path]) -> tuple[list[Path], dict[str, Any]]:
    """The shards in row order, and their common attributes; or a ShardError that names the
    shards that differ, overlap or leave rows out."""
    checked = [(p, *_shard(p)) for p in shards]
    first_path, first, first_layout = checked[0]
    for path, attrs, layout in checked[1:]:
        for key in SAME:
            if attrs[key] != first[key]:
                raise ShardError(f"{path} and {first_path} differ in {key} ({attrs[key]!r} vs "
                                 f"{first[key]!r}); merge shards of one prediction only")
        if layout != first_layout:
            raise ShardError(f"{path} and {first_path} differ in their /preds datasets "
                             f"({layout} vs {first_layout}); predict both shards again")
    found = [(p, a) for p, a, _ in checked]
    found.sort(key=lambda item: (int(item[1]["rows_start"]), int(item[1]["rows_stop"])))
    total, at, previous = int(first["input_rows"]), 0, None
    for path, attrs in found:
        start, stop = int(attrs["rows_start"]), int(attrs["rows_stop"])
        if start < at:
            raise ShardError(f"{path} (rows {start}:{stop}) overlaps {previous} (rows up to "
                             f"{at}); give each row once")
        if start > at:
            raise ShardError(f"rows {at}:{start} of {total} are in no shard; predict them with "
                             f"`--rows {at}:{start}`")
        at, previous = stop, path
    if at != total:
        raise ShardError(f"rows {at}:{total} of {total} are in no shard; predict them with "
                         f"`--rows {at}:{total}`")
    return [p for p, _ in found], first


def merge(shards: Sequence[Path], output: Path) -> Path:
    """Write ``output`` from ``shards`` (checked, streamed); it appears only when complete."""
    guard_output(output, shards, siblings=(".lock",), replaceable=hdf5.is_prediction)
    ordered, common = check(shards)
    source = Path(str(common["input_signature"]).split("|")[0])
    guard_output(output, [*shards, source], siblings=(".lock",))  # nor the shards' input
    attrs = {k: common[k] for k in common if k not in (
        hdf5.ROWS_DONE, hdf5.COMPLETE, "schema_version", "created")}
    attrs.update(rows_start=0, rows_stop=int(common["input_rows"]), merged_shards=len(shards),
                 created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    busy = lambda who: OutputNotWritableError(  # noqa: E731
        output, f"another kmodel run ({who}) is writing it", "wait for it to finish")
    with _lock.held(_lock.lock_path(output), busy):
        tmp = tmp_sibling(output)
        try:
            hdf5.concat(ordered, tmp, attrs, int(common["batch_size"]))
            os.replace(tmp, output)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise write_error(output, e) from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    return output
