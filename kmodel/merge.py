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

from kmodel import _lock, checksums, record
from kmodel._fs import check_input_file, guard_output, tmp_sibling
from kmodel.errors import InputSchemaError, ShardError, write_error
from kmodel.io import hdf5
from kmodel.record import PredictionRecord

_RANGE = ("rows_start", "rows_stop", "input_rows")


def _shard(path: Path) -> tuple[PredictionRecord, hdf5.Schema]:
    """A shard's record and /preds layout, checked against what they claim."""
    check_input_file(path)
    written_by = "merge takes files written by `kmodel predict --rows` or `--shard`"
    try:
        found = record.read(path)
        layout, rows = hdf5.describe(path, "preds")
    except (OSError, hdf5.LayoutError) as e:
        raise InputSchemaError(f"{path}: not a kmodel prediction file ({e}); {written_by}"
                               ) from None
    checksums.check(path)
    if not found.rows_recorded:
        raise ShardError(f"{path}: its row range attributes are not whole numbers; "
                         f"{written_by}")
    missing = [k for k in (*PredictionRecord.SAME_PREDICTION, *_RANGE, "input_signature")
               if found.value(k) is None]
    if missing:
        raise ShardError(f"{path}: no {missing[0]} attribute; {written_by}")
    if not found.complete:
        raise ShardError(f"{path} is not complete; finish it with `kmodel predict ... "
                         "--resume`")
    start, stop, total = (int(found.value(k)) for k in _RANGE)
    done = -1 if found.rows_done is None else found.rows_done
    if not 0 <= start <= stop <= total or rows != stop - start or done != rows or not layout:
        raise ShardError(f"{path} holds {rows} rows with {len(layout)} output(s) but records "
                         f"rows {start}:{stop} of {total} ({done} written); predict that "
                         "shard again")
    return found, layout


def check(shards: Sequence[Path]) -> tuple[list[Path], PredictionRecord]:
    """The shards in row order, and their common record; or a ShardError that names the
    shards that differ, overlap or leave rows out."""
    checked = [(p, *_shard(p)) for p in shards]
    first_path, first, first_layout = checked[0]
    for path, found, layout in checked[1:]:
        if key := found.first_difference(first, PredictionRecord.SAME_PREDICTION):
            raise ShardError(f"{path} and {first_path} differ in {key} ({found.value(key)!r} "
                             f"vs {first.value(key)!r}); merge shards of one prediction only")
        if layout != first_layout:
            raise ShardError(f"{path} and {first_path} differ in their /preds datasets "
                             f"({layout} vs {first_layout}); predict both shards again")
    ordered = sorted(((p, r) for p, r, _ in checked),
                     key=lambda item: (item[1].rows_start or 0, item[1].rows_stop or 0))
    _check_cover(ordered, int(first.input_rows or 0))
    return [p for p, _ in ordered], first


def _check_cover(ordered: list[tuple[Path, PredictionRecord]], total: int) -> None:
    """Shards in row order cover rows 0 to ``total`` once each: no gap, no overlap."""
    at, previous = 0, None
    for path, found in ordered:
        start, stop = int(found.rows_start or 0), int(found.rows_stop or 0)
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


def merge(shards: Sequence[Path], output: Path) -> Path:
    """Write ``output`` from ``shards`` (checked, streamed); it appears only when complete."""
    guard_output(output, shards, siblings=(".lock",), replaceable=hdf5.is_prediction)
    ordered, common = check(shards)
    source = [common.input_path] if common.input_path else []
    guard_output(output, [*shards, *source], siblings=(".lock",))  # nor the shards' input
    total = int(common.input_rows or 0)
    attrs = common.merged(len(shards), total, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          output.parent).to_attrs()
    with _lock.writing(output):
        tmp = tmp_sibling(output)
        try:
            hdf5.concat(ordered, tmp, attrs, int(common.batch_size or 1))
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
