"""The Python API: safe to call from several threads at once, and every argument of a
predict checked (KM002 naming it) before anything runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kmodel
from kmodel.errors import UsageError

#: 8 threads make the first predict of a fresh process at once (a barrier lines them up)
THREADS = """
import sys, threading
import numpy as np
import kmodel

N = 8
barrier = threading.Barrier(N)
results = [None] * N

def work(i):
    x = np.random.default_rng(i).normal(size=(50, 3)).astype(np.float32)
    try:
        barrier.wait()
        out = kmodel.get_model("toy").predict(x, ids=[f"t{i}-{r}" for r in range(50)])
        expected = np.linalg.norm(x, axis=1)
        results[i] = "ok" if np.allclose(out["norm"], expected) else "wrong rows"
    except BaseException as e:
        results[i] = f"{type(e).__name__}: {e}"

threads = [threading.Thread(target=work, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\\n".join(results))
"""


@pytest.mark.slow  # five processes of 8 predicts, the first building the env: ~9 s
def test_eight_threads_make_a_processs_first_predict_at_once(project: Path,
                                                              tmp_path: Path) -> None:
    """The first predict of a process finds uv (whose finder reads sysconfig, not
    thread-safe on first use), pip's sources and the env; in a fresh KMODEL_HOME one
    thread builds the env while the others wait for it. A race shows in some runs, not
    all (uv's finder failed in about half of the processes): five processes."""
    env = {**os.environ, "KMODEL_HOME": str(tmp_path / "fresh home")}
    for run in range(5):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                             env=env, timeout=600)
        print(f"run {run}: {time.perf_counter() - t0:.1f} s")
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.split() == ["ok"] * 8, res.stdout
    builds = list((tmp_path / "fresh home" / "envs" / ".builds").iterdir())
    assert len(builds) == 1, builds  # built once, by one of the threads


def test_predict_checks_every_argument_before_anything_runs(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("KMODEL_HOME", str(home))  # nothing built: a run would build
    toy = kmodel.get_model("toy")
    x = np.zeros((5, 3), np.float32)
    bad_ids = [(["a", "b"], "ids has 2 item(s) but the data has 5 row(s)"),
               (list("abcdef"), "ids has 6 item(s) but the data has 5 row(s)"),
               ("abcde", "ids is a list (or 1-D array) of ids, one per row, not str"),
               (5, "not int"),
               (np.zeros((5, 1), int), "not ndarray (5, 1)"),
               ([None] * 5, "ids are strings or integers, not None"),
               ([0.5] * 5, "not 0.5 (float)"),
               ([True] * 5, "not True (bool)")]
    for ids, words in bad_ids:
        with pytest.raises(UsageError, match=r"^predict: ") as e:
            toy.predict(x, ids=ids)
        assert words in str(e.value), (ids, str(e.value))
    for size in (0, -1, "8", 2.5, True, [8]):
        words = "^" + re.escape(f"batch_size {size!r} is not a positive whole number")
        with pytest.raises(UsageError, match=words):
            toy.predict(x, batch_size=size)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match=words):
            toy.predict_file("model_specs/mlp/example/in.h5", tmp_path / "o.h5",
                             batch_size=size)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="resume is True or False"):
        toy.predict_file("in.h5", "o.h5", resume="yes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="input y has 4 rows, the first input has 5"):
        toy.predict({"x": x, "y": x[:4]})
    with pytest.raises(UsageError, match="ids come from the input file"):
        toy.predict("model_specs/mlp/example/in.h5", ids=["a"])
    with pytest.raises(UsageError, match="the dict of inputs is empty"):
        toy.predict({})
    assert not (home / "envs").exists()  # nothing ran: no env built, not even its folder
    assert not (tmp_path / "o.h5").exists()
    # what is allowed: ids of numpy ints or strings, a numpy integer batch size
    out = toy.predict(x, ids=np.arange(5), batch_size=np.int64(2))  # type: ignore[arg-type]
    assert out["y"].shape == (5,) and (home / "envs").is_dir()
