"""The command line: parse, call one library function, print. Errors become one line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kmodel import defaults
from kmodel._version import __version__
from kmodel.errors import (
    Interrupted,
    KmodelError,
    OutputNotWritableError,
    Terminated,
    UsageError,
    as_error,
    signum_of,
)

if TYPE_CHECKING:  # imported where needed: pydantic alone costs 20 ms of every start
    from kmodel.registry import Registry

log = logging.getLogger("kmodel")
_WRITE_FAILED = False  # set when a command failed writing a file (see main)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
task_option = click.option(
    "--task", type=click.Choice(["binary", "multiclass", "regression"]),
    help="The task (default: inferred from the targets: two values binary, at most 20 whole "
         "numbers multiclass, else regression).")


class KmodelGroup(click.Group):
    """Turns KmodelError into ``Error [CODE]: message`` and its exit code (traceback with -v),
    and click's usage errors into one ``Error [KM002]`` line (exit 2)."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(0)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            message = " ".join(e.format_message().split()).rstrip(".")
            click.echo(f"Error [{UsageError.code}]: {message}{where}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo(f"Error [{Interrupted.code}]: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BaseException as e:  # every failure becomes one line (traceback with -v)
            error = as_error(e)
            if error is None:
                raise
            global _WRITE_FAILED
            _WRITE_FAILED = isinstance(error, OutputNotWritableError)
            verbose = (ctx.obj or {}).get("verbose", 0)
            if verbose:
                if error.detail:
                    click.echo(error.detail.rstrip(), err=True)
                else:
                    traceback.print_exc()
            more = getattr(error, "more", [])
            also = f" (and {len(more)} more: `kmodel validate {getattr(error, 'path', '')}` " \
                "lists them)" if more else ""
            click.echo(f"Error [{error.code}]: {' '.join(str(error).split())}{also}", err=True)
            ctx.exit(error.exit_code)


def _registry(ctx: click.Context) -> Registry:
    """The command's Registry, made on first use (--specs/--envs of the group)."""
    if "registry" not in ctx.obj:
        from kmodel.registry import Registry

        ctx.obj["registry"] = Registry(*ctx.obj.pop("where"))
    reg: Registry = ctx.obj["registry"]
    return reg


def _path_list(values: Sequence[str]) -> list[Path]:
    """Folders given as repeated options and/or os.pathsep-joined lists, in order."""
    return [Path(p) for v in values for p in v.split(os.pathsep) if p]


def _complete(kind: str) -> Callable[[click.Context, click.Parameter, str], list[str]]:
    """Shell completion of model or env names (see the README: `eval "$(...)"`)."""
    def names(ctx: click.Context, _: click.Parameter, incomplete: str) -> list[str]:
        from kmodel.registry import Registry

        root = ctx.find_root()
        specs, envs = (root.params.get("specs") or ()), root.params.get("envs")
        try:
            reg = Registry(list(specs), _path_list(envs or ()))
            found = [] if kind == "env" else list(reg.model_paths())
            if kind in ("env", "env or model"):
                found += reg.env_names()
        except (KmodelError, OSError):
            return []
        return sorted({n for n in found if n.startswith(incomplete)})
    return names


@click.group(cls=KmodelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmodel")
@click.option("-v", "--verbose", count=True, help="More output; full tracebacks on errors.")
@click.option("--specs", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Extra folder of model specs (before KMODEL_PATH and ./model_specs).")
@click.option("--envs", multiple=True, metavar="PATHS",
              help="Folders of env specs, searched in order (repeat it, or join folders with "
                   f"{os.pathsep!r}); default: $KMODEL_ENVS (a list too), else ./envs.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, specs: tuple[Path, ...], envs: tuple[str, ...]) -> None:
    """kmodel: run many models, each in its own locked environment, and ensemble them.

    Every model has a YAML spec (model_specs/NAME/model.yaml) naming an env
    (envs/NAME.yaml). kmodel locks and builds the envs, streams predictions into HDF5,
    and trains an ensembling model on the stored predictions.
    """
    logging.basicConfig(format="kmodel: %(message)s",
                        level=logging.DEBUG if verbose > 1 else logging.INFO, force=True)
    ctx.obj = {"verbose": verbose, "where": (list(specs), _path_list(envs))}


# --- specs ------------------------------------------------------------------------


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@json_option
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...], as_json: bool) -> None:
    """Check model specs, env specs and composition configs (default: every model and env
    kmodel finds, and the compositions in ./workflows/*.yaml).

    PATHS may be model.yaml files, model folders, envs/*.yaml or workflow configs.
    """
    from kmodel.validate import validate as check

    results = check(_registry(ctx), paths)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    for r in [] if as_json else results:
        if r.ok:
            click.echo(f"ok    {r.path}")
            continue
        # one Error line per file; its other problems below it, indented
        first, *rest = (" ".join(str(e).split()) for e in r.errors)
        also = f" (and {len(rest)} more below)" if rest else ""
        click.echo(f"Error [{r.errors[0].code}]: {first}{also}", err=True)
        for line in rest:
            click.echo(f"  also: {line}", err=True)
    if not all(r.ok for r in results):
        ctx.exit(1)


@cli.command()
@click.argument("name")
@click.option("--env", required=True, help="The env it runs in (an envs/ENV.yaml, or a new "
              "one with --new-env).", shell_complete=_complete("env"))
@click.option("--inputs", default="x:float32:1", show_default=True, metavar="NAME:DTYPE:WIDTH",
              help="Its input: rows of WIDTH values.")
@click.option("--new-env", is_flag=True, help="Also write envs/ENV.yaml (python and numpy).")
@click.pass_context
def init(ctx: click.Context, name: str, env: str, inputs: str, new_env: bool) -> None:
    """Start a new model: model_specs/NAME/ with a spec and a model.py that work as written
    (a numpy logistic regression to replace), then say the next commands."""
    from kmodel.scaffold import init as scaffold

    written = scaffold(_registry(ctx), name, env, inputs=inputs, new_env=new_env)
    for path in written:
        click.echo(f"wrote {path}")
    folder = written[0].parent  # the model's folder (its model.yaml comes first)
    steps = [*([f"kmodel env lock {env}"] if new_env else []),
             f"kmodel train {name} -i TRAIN.h5 -o {folder / 'weights'}   # records the hashes",
             f"kmodel predict {name} -i IN.h5 -o OUT.h5"]
    click.echo("next:\n" + "\n".join(f"  {step}" for step in steps))


@cli.command("ls")
@json_option
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List the models kmodel can find, and the folder each comes from. A spec that does not
    load is reported (exit 1) and the others are still listed; a model hidden by one of the
    same name earlier on the search path is named."""
    from kmodel.api import listing

    registry = _registry(ctx)
    models, broken = listing(registry)
    if as_json:
        click.echo(json.dumps(models, indent=2))
    else:
        for m in models:
            root = str(Path(m["path"]).parent.parent)
            click.echo(f"{m['name']:<16} {m['version']:<8} env={m['env']:<16} {root:<14} "
                       f"{m['description']}")
    for spec, winner in registry.hidden:  # the first folder on the search path wins
        click.echo(f"kmodel: {spec.parent.name} in {spec.parent.parent} is hidden by "
                   f"{winner.parent}", err=True)
    for error in broken:
        click.echo(f"Error [{error.code}]: {error}", err=True)
    if broken:
        ctx.exit(1)


@cli.command()
@click.argument("model", shell_complete=_complete("model"))
@json_option
@click.pass_context
def info(ctx: click.Context, model: str, as_json: bool) -> None:
    """Show a model's inputs, outputs, env, weights and hashes."""
    from kmodel.api import ModelHandle

    d = ModelHandle(model, _registry(ctx)).info
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"{d['name']} {d['version']}: {d['description']}")
    click.echo(f"  spec        {d['path']}  sha256 {d['spec_sha256'][:16]}")
    click.echo(f"  entrypoint  {d['entrypoint']}  args {json.dumps(d['args'])}")
    click.echo(f"  env         {d['env']} ({d['env_kind']}) {d['env_spec']}  lock "
               f"{d['lockfile'] or 'missing'}")
    if d["resources"] or d["device"]:
        given = {k: v for k, v in (d["resources"] or {}).items() if v is not None}
        click.echo(f"  resources   {json.dumps(given)}  device {d['device'] or 'default'}")
    for kind in ("inputs", "outputs"):
        for a in d[kind]:
            click.echo(f"  {kind[:-1]:<11} {a['name']} {a['dtype']}{list(a['shape'])}  "
                       f"{a['doc']}")
    for name, digest in (d["weights"] or {}).get("sha256", {}).items():
        click.echo(f"  weight      {name}  sha256 {digest[:16]}")
    if not d["weights"]:
        click.echo("  weights     none (trained by kmodel compose)" if d["trainable"]
                   else "  weights     none")


@cli.command("hash")
@click.argument("model", shell_complete=_complete("model"))
@click.option("--write", is_flag=True, help="Write the current weight hashes into model.yaml.")
@click.pass_context
def hash_(ctx: click.Context, model: str, write: bool) -> None:
    """Compare a model's weight files with the hashes in its spec (or update them).

    Every file of the weights folder counts: params.json, provenance.json and the weight
    files (.npy, .safetensors, .onnx, .keras, .weights.h5, .json, .ubj, .txt); a pickle or
    a file of another format is refused (KM305). Exits 1 when they differ, unless --write
    records the files as they are now.
    """
    from kmodel.weights import check_compare, compare, write_hashes

    m = _registry(ctx).model(model)
    if write:
        for name, digest in write_hashes(m).items():
            click.echo(f"{digest}  {name}")
        click.echo(f"updated {m.path}")
        return
    rows = compare(m)
    if not rows:
        click.echo(f"{model} has no weights in its spec")
    for state, name in rows:
        click.echo(f"{state:<9} {name}")
    check_compare(m, rows)


# --- environments -----------------------------------------------------------------


@cli.group()
def env() -> None:
    """Lock, build and inspect model environments."""


@env.command("lock")
@click.argument("names", nargs=-1, shell_complete=_complete("env or model"))
@click.option("--all", "all_", is_flag=True, help="Lock every env in envs/.")
@click.pass_context
def env_lock(ctx: click.Context, names: tuple[str, ...], all_: bool) -> None:
    """Resolve env specs and write their lockfiles (envs/NAME.lock, NAME.conda-lock.yml)."""
    from kmodel.envs import backend_for

    for ref in _registry(ctx).env_refs(names, every=all_):
        t0 = time.perf_counter()
        path = backend_for(ref).lock(ref)
        click.echo(f"locked {ref.name} -> {path} ({time.perf_counter() - t0:.1f} s)")


@env.command("create")
@click.argument("names", nargs=-1, shell_complete=_complete("env or model"))
@click.option("--all", "all_", is_flag=True, help="Build every env in envs/.")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a JSON record of the env here (for workflows).")
@click.pass_context
def env_create(ctx: click.Context, names: tuple[str, ...], all_: bool,
               record: Path | None) -> None:
    """Build envs (by env or model name) from their lockfiles; a no-op when built."""
    from kmodel.envs import create

    for e in create(_registry(ctx), names, every=all_, record=record):
        click.echo(f"{e.name}: {e.prefix}")


@env.command("path")
@click.argument("name", shell_complete=_complete("env or model"))
@click.pass_context
def env_path(ctx: click.Context, name: str) -> None:
    """Print the folder of a model's (or env's) built environment."""
    from kmodel.envs import path_of

    click.echo(str(path_of(_registry(ctx), name)))


@env.command("status")
@json_option
@click.pass_context
def env_status(ctx: click.Context, as_json: bool) -> None:
    """Say for every env whether it is locked, built, and whether its spec drifted.

    Exits 1 when any env is not locked, drifted, or not built.
    """
    from kmodel.envs import statuses

    rows = statuses(_registry(ctx))
    if as_json:
        click.echo(json.dumps([{"env": s.name, "backend": s.backend, "locked": s.locked,
                                "drift": s.drift, "built": s.built, "stale": s.stale,
                                "prefix": str(s.prefix) if s.prefix else None} for s in rows],
                              indent=2))
    else:
        for s in rows:
            state = ("not locked" if not s.locked else "spec changed since lock" if s.drift
                     else "not built" if not s.built else "ok")
            click.echo(f"{s.name:<20} {s.backend:<6} {state}")
    if any(s.stale for s in rows):
        ctx.exit(1)


@env.command("gc")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.pass_context
def env_gc(ctx: click.Context, dry_run: bool) -> None:
    """Remove env builds in KMODEL_HOME that no current lockfile refers to.

    A build is kept while the lockfile it was made from, or a lockfile in the env folder
    (--envs, KMODEL_ENVS, ./envs), still gives its key; builds left by interrupted builds
    go too. A build whose lockfile you cannot read (another user's, in a shared
    KMODEL_HOME) is kept, and said so.
    """
    from kmodel.envs.gc import remove, survey

    items, kept = survey(_registry(ctx))
    for k in kept:
        click.echo(f"kept {k.path}: {k.reason}")
    for item in items:
        if not dry_run:
            remove(item)
        click.echo(f"{'would remove' if dry_run else 'removed'} {item.path} "
                   f"({item.size / 1e6:.0f} MB): {item.reason}")
    total = sum(i.size for i in items) / 1e6
    click.echo(f"{'would free' if dry_run else 'freed'} {total:.0f} MB in {len(items)} "
               f"build(s)" if items else "nothing to remove")


# --- predictions ------------------------------------------------------------------


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal; elsewhere (a cluster job's log, CI) a line every few
    seconds with the rows done and the rate, so long work never looks hung."""
    if not sys.stderr.isatty():
        try:
            every = float(os.environ.get("KMODEL_PROGRESS_SECONDS", defaults.PROGRESS_SECONDS))
        except ValueError:
            every = defaults.PROGRESS_SECONDS  # a mistyped setting never stops the work
        t0 = last = time.monotonic()

        def line(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= every and total:
                last = now
                click.echo(f"kmodel: {label}: {done:,} of {total:,} rows ({done / total:.0%}), "
                           f"{done / (now - t0):,.0f} rows/s", err=True)

        yield line
        return
    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


io_options = [
    click.option("-i", "--input", "input_path", required=True, type=click.Path(path_type=Path),
                 help="Input HDF5 (/inputs/<name>, /metadata/id)."),
    click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
                 help="Output HDF5; written under a temporary name, renamed when complete."),
]


def _rows(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    start, sep, stop = value.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start or 0), int(stop) if stop else None
    except ValueError:
        raise click.BadParameter("give START:STOP, e.g. 0:1000000 (STOP may be left out)",
                                 ctx, param) from None


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    k, sep, n = value.partition("/")
    try:
        shard = int(k), int(n)
        if not sep or not 0 <= shard[0] < shard[1]:
            raise ValueError
        return shard
    except ValueError:
        raise click.BadParameter("give K/N with 0 <= K < N, e.g. 0/4 for the first of 4",
                                 ctx, param) from None


def _device(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from kmodel.resources import check_device

    if value is None:
        return None
    try:
        return check_device(value)
    except UsageError:
        raise click.BadParameter("give cpu, cuda, cuda:INDEX (e.g. cuda:0) or auto", ctx,
                                 param) from None


def job_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--threads, --device and --log: how the model's job runs, where its output goes."""
    for option in reversed([
        click.option("--threads", type=click.IntRange(1), metavar="N",
                     help="CPU threads for the model (OMP/MKL/OpenBLAS and torch's); "
                          "default: the spec's resources.threads, else the libraries' own."),
        click.option("--device", callback=_device, metavar="cpu|cuda[:I]|auto",
                     help="Where the model runs (a build(device=...) gets it); default: the "
                          "spec's device (cuda when it asks for gpus). A GPU the job cannot "
                          "see (CUDA_VISIBLE_DEVICES) is refused at once; auto falls back to "
                          "the CPU."),
        click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the model's own stdout and stderr to this file as they "
                          "come (-v: also to stderr)."),
    ]):
        f = option(f)
    return f


def _options(ctx: click.Context, threads: int | None, device: str | None,
             log_file: Path | None, given: Sequence[Path | str | None] = ()) -> Any:
    """The job options of a command: its --threads, --device, --log, and -v (the model's
    output also on stderr). The log file starts empty: it may not be any path the command
    was ``given`` (its inputs, outputs, weights), nor a file of the search path's models
    (their folders, specs, env specs and locks)."""
    from kmodel.api import checked_log
    from kmodel.errors import write_error
    from kmodel.resources import JobOptions

    if log_file is not None:
        checked_log(_registry(ctx), log_file, given)
        try:
            log_file.write_bytes(b"")
        except OSError as e:
            raise write_error(log_file, e) from None
    return JobOptions(threads, device, log_file, bool((ctx.obj or {}).get("verbose")))


@cli.command()
@click.argument("model", shell_complete=_complete("model"))
@click.option("-i", "--input", "inputs", required=True, multiple=True,
              type=click.Path(path_type=Path),
              help="Input HDF5 (/inputs/<name>, /metadata/id); repeat -i/-o pairs to predict "
                   "several inputs with one runner process.")
@click.option("-o", "--output", "outputs", required=True, multiple=True,
              type=click.Path(path_type=Path),
              help="Output HDF5 (one per -i); written under a temporary name, renamed when "
                   "complete.")
@click.option("--batch-size", type=click.IntRange(1), metavar="N",
              help=f"Rows per batch: bounds memory, whatever the input size (default "
                   f"{defaults.BATCH_SIZE}; a composition's bundle: its own).")
@click.option("--rows", callback=_rows, metavar="START:STOP",
              help="Predict only these rows (a shard; merge shards with `kmodel merge`). "
                   "Cut at multiples of --batch-size for results equal to an unsharded run.")
@click.option("--shard", callback=_shard, metavar="K/N",
              help="Predict the K-th of N shards (K from 0), cut at multiples of --batch-size.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted or killed run from OUTPUT.partial (refused if "
                   "the partial was made by another model, spec, weights, env or input).")
@click.option("--weights", type=click.Path(path_type=Path),
              help="Use these weights (a folder `kmodel train -o` wrote, e.g. a fold's) "
                   "instead of the model's own.")
@job_options
@click.pass_context
def predict(ctx: click.Context, model: str, inputs: tuple[Path, ...], outputs: tuple[Path, ...],
            batch_size: int | None, rows: Any, shard: Any, resume: bool,
            weights: Path | None, threads: int | None, device: str | None,
            log_file: Path | None) -> None:
    """Predict with MODEL in its own env and write OUTPUT (/preds/<name>, /metadata/id).

    OUTPUT appears only when every row is written. One run at a time may write it (a second
    is refused); an interrupted run (Ctrl-C, SIGTERM, a killed runner) keeps its rows in
    OUTPUT.partial for --resume. MODEL may be a bundle, FILE.kmodel (`kmodel pack`): its
    model, or for a composition's bundle the ensemble's predictions.
    """
    from kmodel.bundle import is_bundle
    from kmodel.predict import predict_many

    if len(inputs) != len(outputs):
        raise UsageError(f"give one -o per -i (got {len(inputs)} inputs, {len(outputs)} "
                         "outputs)")
    if rows is not None and shard is not None:
        raise UsageError("give --rows or --shard, not both")
    t0 = time.perf_counter()
    beside = [o.with_name(o.name + suffix) for o in outputs for suffix in (".partial", ".lock")]
    options = _options(ctx, threads, device, log_file, [
        *inputs, *outputs, *beside, weights, *([model] if Path(model).is_file() else [])])
    if is_bundle(model):
        from kmodel import bundle

        if rows is not None or shard is not None or resume or weights is not None:
            raise UsageError("--rows, --shard, --resume and --weights take a model by name, "
                             "not a bundle")
        bundle.predict(Path(model), list(zip(inputs, outputs, strict=True)), batch_size,
                       options)
        for output in outputs:
            click.echo(f"wrote {output} ({time.perf_counter() - t0:.1f} s)")
        return
    from kmodel.weights import Weights

    trained = Weights.from_folder(weights) if weights is not None else None
    with _progress(model) as progress:
        predict_many(_registry(ctx), model, list(zip(inputs, outputs, strict=True)),
                     batch_size=batch_size, resume=resume, progress=progress, rows=rows,
                     shard=shard, weights=trained, options=options)
    for output in outputs:
        click.echo(f"wrote {output} ({time.perf_counter() - t0:.1f} s)")


@cli.command()
@click.argument("model", required=False, shell_complete=_complete("model"))
@click.option("--composition", type=click.Path(dir_okay=False, path_type=Path),
              help="Bundle a composition instead: its base models, its ensembler with its "
                   "trained weights, and their envs.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The bundle to write, e.g. NAME-VERSION.kmodel.")
@click.pass_context
def pack(ctx: click.Context, model: str | None, composition: Path | None, output: Path) -> None:
    """Bundle MODEL (spec, code, weights, env spec and lock, and a manifest with every
    file's sha256) into one file to share; `kmodel predict FILE.kmodel` runs it."""
    from kmodel import bundle

    if model is not None and composition is None:
        made = bundle.pack(_registry(ctx), model, output)
    elif composition is not None and model is None:
        made = bundle.pack_composition(_registry(ctx), composition, output)
    else:
        raise UsageError("give a MODEL or --composition CONFIG (one of them)")
    size = output.stat().st_size
    click.echo(f"wrote {output} ({len(made.files)} files, " + (
        f"{size / 1e6:.1f} MB)" if size >= 1e6 else f"{size / 1e3:.0f} KB)"))


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="New folder to extract into (default: the bundle's name without .kmodel).")
def unpack(bundle_path: Path, output: Path | None) -> None:
    """Check BUNDLE against its manifest and extract it: a folder for KMODEL_PATH (its
    models, and their envs in envs/)."""
    from kmodel import bundle

    folder = output or bundle_path.with_suffix("")
    made = bundle.unpack(bundle_path, folder)
    click.echo(f"extracted {len(made.files)} files to {folder}/ (KMODEL_PATH={folder} finds "
               f"{made.model})")


@cli.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@io_options[1]
@click.pass_context
def merge(ctx: click.Context, shards: tuple[Path, ...], output: Path) -> None:
    """Merge prediction SHARDS (from `predict --rows` or `--shard`) into OUTPUT.

    The shards must come from one model, spec, weights, env and input, and cover every row
    of the input exactly once; the merged file equals an unsharded run's.
    """
    from kmodel.merge import merge as run_merge

    run_merge(shards, output)
    click.echo(f"wrote {output} from {len(shards)} shards")


@cli.command()
@click.argument("train_path", metavar="TRAIN", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for fold-K-fit.h5 and fold-K-holdout.h5.")
@click.option("--folds", default=defaults.FOLDS, show_default=True, type=click.IntRange(2, 100))
@click.option("--seed", default=defaults.SEED, show_default=True,
              type=click.IntRange(0, 2**32 - 1))
@click.option("--target-name", default=defaults.TARGET_NAME, show_default=True)
@task_option
def folds(train_path: Path, output: Path, folds: int, seed: int, target_name: str,
          task: str | None) -> None:
    """Cut TRAIN into K folds for cross-fitting: each fold's rows (holdout) and the rest
    (fit), stratified by class for classification; the same ids give the same folds."""
    from kmodel.folds import make

    written = make(train_path, output, folds=folds, seed=seed, target_name=target_name,
                   task=task)
    click.echo(f"wrote {len(written)} files ({folds} folds) to {output}/")


@cli.command()
@click.argument("fold_preds", metavar="FOLD_PRED...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--reference", required=True, type=click.Path(path_type=Path),
              help="The file whose rows the folds cover (the train split): its row order.")
@io_options[1]
def oof(fold_preds: tuple[Path, ...], reference: Path, output: Path) -> None:
    """Gather a model's out-of-fold predictions (each fold's holdout rows, predicted by the
    model fitted on the other folds) into OUTPUT, in REFERENCE's row order. Refused unless
    every row is there once and no fold's weights were trained on the rows it predicted."""
    from kmodel.folds import gather

    gather(fold_preds, reference, output)
    click.echo(f"wrote {output} from {len(fold_preds)} folds")


@cli.command()
@click.argument("sources", metavar="NAME=FILE:/DATASET...", nargs=-1, required=True)
@click.option("--ids", "ids_from", required=True, type=click.Path(path_type=Path),
              help="The file whose ids (and their order) the rows follow.")
@click.option("--targets", "targets_from", type=click.Path(path_type=Path),
              help="Also copy this file's /targets.")
@io_options[1]
def assemble(sources: tuple[str, ...], ids_from: Path, targets_from: Path | None,
             output: Path) -> None:
    """Write an input file from datasets of other files (raw inputs, other models'
    predictions), rows aligned by id: /inputs/NAME from FILE:/DATASET; a NAME given several
    times gets its sources side by side (columns), e.g. x=data.h5:/inputs/x
    x=logreg.h5:/preds/proba."""
    from kmodel.assemble import assemble as run_assemble

    inputs: dict[str, list[tuple[Path, str]]] = {}
    for item in sources:
        name, sep, where = item.partition("=")
        file, colon, dataset = where.rpartition(":")
        if not (sep and colon and name and file and dataset.startswith("/")):
            raise UsageError(f"{item!r}: give NAME=FILE:/GROUP/DATASET, e.g. "
                             "x=train.h5:/inputs/x")
        inputs.setdefault(name, []).append((Path(file), dataset))
    run_assemble(output, ids_from, inputs, targets_from=targets_from)
    click.echo(f"wrote {output} ({', '.join(inputs)})")


@cli.command()
@click.argument("model", shell_complete=_complete("model"))
@io_options[0]
@click.option("--target-name", default=defaults.TARGET_NAME, show_default=True,
              help="Dataset in /targets.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Weights folder to write (params.json, the weights: *.npy, "
                   "weights.safetensors or the model's own native files, hashes.json); an "
                   "existing folder is replaced only if kmodel wrote it.")
@job_options
@click.pass_context
def train(ctx: click.Context, model: str, input_path: Path, target_name: str,
          output: Path, threads: int | None, device: str | None,
          log_file: Path | None) -> None:
    """Fit MODEL on /inputs and /targets of INPUT in its own env; write its weights.

    A fresh model then loads the weights and must predict a sample of the training rows
    as the trained model does (else KM304, nothing is written); pickles are refused (KM305).
    """
    from kmodel.api import ModelHandle

    handle = ModelHandle(model, _registry(ctx))
    options = _options(ctx, threads, device, log_file, [input_path, output])
    handle.train(input_path, output, targets=target_name, threads=options.threads,
                 device=options.device, log=options.log, echo=options.echo)
    own, spec = handle.own_weights, handle.registry.model(model).path
    click.echo(f"wrote the weights of {model} to {output}")
    if output.resolve() == own.resolve():
        click.echo(f"recorded their sha256 in {spec}")
    else:
        click.echo(f"to make them {model}'s own weights, train with -o {own} (kmodel then "
                   f"records their hashes in {spec})")


# --- composition ------------------------------------------------------------------


@cli.group()
def compose() -> None:
    """Train an ensembling model on stored predictions, then apply it."""


preds_argument = click.argument("preds", nargs=-1, required=True, type=click.Path(path_type=Path))
mixed_option = click.option(
    "--allow-mixed-inputs", is_flag=True,
    help="Accept prediction files made from different input files (their input_sha256 "
         "differ); by default that is refused.")


@compose.command("train")
@click.argument("ensembler")
@preds_argument
@click.option("--targets", required=True, type=click.Path(path_type=Path),
              help="HDF5 with /targets/<name> and /metadata/id (e.g. the train input).")
@click.option("--target-name", default=defaults.TARGET_NAME, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Folder for the trained ensembler's weights (replaced only if kmodel "
                   "wrote it).")
@task_option
@click.option("--output-of", "outputs", multiple=True, metavar="MODEL=NAME",
              help="The prediction dataset to take from MODEL's file (when it has several).")
@click.option("--passthrough", multiple=True, metavar="NAME",
              help="Also give the ensembler the targets file's /inputs/NAME as they are.")
@click.option("--stacking", type=click.Choice(["cv", "holdout", "in-sample"]), default="cv",
              show_default=True,
              help="How PREDS were kept apart from the base models' training rows; unless "
                   "in-sample, rows a base model was trained on are refused (KM606).")
@mixed_option
@job_options
@click.pass_context
def compose_train(ctx: click.Context, ensembler: str, preds: tuple[Path, ...], targets: Path,
                  target_name: str, output: Path, task: str | None, outputs: tuple[str, ...],
                  passthrough: tuple[str, ...], stacking: str,
                  allow_mixed_inputs: bool, threads: int | None, device: str | None,
                  log_file: Path | None) -> None:
    """Fit ENSEMBLER on PREDS (aligned by /metadata/id) against the targets: out-of-fold
    or blend-row predictions, the task's columns of each (P(y=1), a probability per class,
    the value)."""
    from kmodel.compose import train as run_train

    chosen = dict(item.partition("=")[::2] for item in outputs)
    with _progress(ensembler) as progress:
        w = run_train(_registry(ctx), ensembler, preds, targets, output,
                      target_name=target_name, task=task, outputs=chosen,
                      passthrough=passthrough, stacking=stacking,
                      allow_mixed_inputs=allow_mixed_inputs, progress=progress,
                      options=_options(ctx, threads, device, log_file,
                                       [*preds, targets, output]))
    click.echo(f"trained {ensembler} on {len(preds)} prediction files -> {w.folder}")


@compose.command("predict")
@click.argument("ensembler")
@preds_argument
@click.option("--weights", required=True, type=click.Path(path_type=Path),
              help="Folder written by `kmodel compose train`.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path),
              help="The input file whose /inputs the ensembler was trained to take as they "
                   "are (its passthrough).")
@mixed_option
@job_options
@click.pass_context
def compose_predict(ctx: click.Context, ensembler: str, preds: tuple[Path, ...],
                    weights: Path, output: Path, data: Path | None,
                    allow_mixed_inputs: bool, threads: int | None, device: str | None,
                    log_file: Path | None) -> None:
    """Apply a trained ENSEMBLER to PREDS (same models, same order as in training)."""
    from kmodel.compose import apply

    with _progress(ensembler) as progress:
        apply(_registry(ctx), ensembler, preds, weights, output, data=data,
              allow_mixed_inputs=allow_mixed_inputs, progress=progress,
              options=_options(ctx, threads, device, log_file,
                               [*preds, weights, output, data]))
    click.echo(f"wrote {output}")


def _labelled(items: tuple[str, ...]) -> dict[str, Path]:
    """LABEL=PRED.h5 arguments (a bare PRED.h5 is labelled by its name)."""
    labelled: dict[str, Path] = {}
    for item in items:
        label, sep, path = item.partition("=")
        label, file = (label, Path(path)) if sep else (Path(item).stem, Path(item))
        if not label.strip() or label in labelled:
            why = "an empty label" if not label.strip() else f"the label {label!r} twice"
            raise UsageError(f"{why} in {item!r}; give each prediction file its own "
                             "LABEL=PRED.h5")
        labelled[label] = file
    return labelled


@cli.command()
@click.argument("preds", nargs=-1, required=True)
@click.option("--targets", required=True, type=click.Path(path_type=Path))
@click.option("--target-name", default=defaults.TARGET_NAME, show_default=True)
@task_option
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Also write the scores as JSON here.")
@click.option("--level-one", "level_one", multiple=True, metavar="LABEL=PRED.h5",
              help="A base model's level-one predictions (out-of-fold, or of the blend rows): "
                   "adds level-one scores, the average, the best single model.")
@click.option("--level-one-targets", type=click.Path(path_type=Path),
              help="The targets of the level-one rows.")
@click.option("--ensembler", type=click.Path(path_type=Path),
              help="The trained ensembler's folder: its task and its weight per model.")
@click.option("--figure", type=click.Path(path_type=Path),
              help="Also draw the curves (ROC, calibration or predicted vs true) as SVG.")
@click.option("--output-of", "outputs", multiple=True, metavar="MODEL=NAME",
              help="The prediction dataset to score of MODEL's file (when it has several).")
@json_option
@click.pass_context
def score(ctx: click.Context, preds: tuple[str, ...], targets: Path, target_name: str,
          task: str | None, output: Path | None, level_one: tuple[str, ...],
          level_one_targets: Path | None, ensembler: Path | None, figure: Path | None,
          outputs: tuple[str, ...], as_json: bool) -> None:
    """Score LABEL=PRED.h5 files against the targets with the task's metrics (as
    scikit-learn defines them): binary log_loss, roc_auc, brier, accuracy; multiclass
    log_loss, accuracy, roc_auc_ovr (macro); regression rmse, mae, r2. A prediction the
    task cannot judge (its columns, values outside [0, 1]) is an error, not a number."""
    from dataclasses import asdict

    from kmodel.scores import score as run_score

    report = run_score(_labelled(preds), targets, target_name, output, task=task,
                       level_one=_labelled(level_one) if level_one else None,
                       level_one_targets=level_one_targets, ensembler=ensembler,
                       figure=figure,
                       outputs=dict(item.partition("=")[::2] for item in outputs) or None)
    click.echo(json.dumps(asdict(report), indent=2) if as_json
               else _score_table(asdict(report)))


def _score_table(doc: dict[str, Any]) -> str:
    """A score document as a table: the leaderboard when there is one."""
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    names = doc.get("metrics") or ["auc", "accuracy"]  # an older kmodel's table
    primary = doc.get("primary") or names[0]
    board = doc.get("leaderboard") or [{"label": k, "test": v, "level_one": None,
                                        "best": False} for k, v in doc["scores"].items()]
    weights = doc.get("weights") or {}
    wide = max(12, *(len(r["label"]) + 7 for r in board))
    head = f"{'model':<{wide}} " + " ".join(f"{m:>9}" for m in names) + f" {'rows':>6}"
    if doc.get("level_one"):
        head += f"  {'L1 ' + primary:>12} {'weight':>7}"
    lines = [head]
    for r in board:
        label = r["label"] + (" (best)" if r.get("best") else "")
        line = f"{label:<{wide}} " + " ".join(f"{num(r['test'].get(m)):>9}" for m in names)
        line += f" {int(r['test']['rows']):>6}"
        if doc.get("level_one"):
            first = (r.get("level_one") or {}).get(primary)
            weight = weights.get(r["label"])
            line += f"  {num(first):>12} {'-' if weight is None else f'{weight:.3f}':>7}"
        lines.append(line)
    if doc.get("stacking"):
        lines.append(f"stacking: {doc['stacking']}; L1 = scores on the ensembler's training "
                     "rows (out-of-fold for cv; the ensemble's: its own cross-validation)")
    chose = (doc.get("ensembler") or {}).get("chose", "")
    if chose.startswith("model "):
        lines.append(f"the ensembler kept {chose} alone: stacking did not beat it in "
                     "cross-validation on the level-one rows")
    lines += [f"FLAG: {flag}" for flag in doc.get("flags") or []]
    return "\n".join(lines)


@cli.group()
def data() -> None:
    """Write input files: the example data, or your own table."""


@data.command("breast_cancer")
@click.option("--train", "train_path", required=True, type=click.Path(path_type=Path))
@click.option("--test", "test_path", required=True, type=click.Path(path_type=Path))
@click.option("--blend", "blend_path", type=click.Path(path_type=Path),
              help="Also halve the test rows: the first half goes here (a blend split, for "
                   "stacking: holdout).")
@click.option("--seed", default=defaults.SEED, show_default=True,
              type=click.IntRange(0, 2**32 - 1))
@click.option("--test-fraction", default=defaults.TEST_FRACTION, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True))
def data_breast_cancer(train_path: Path, test_path: Path, blend_path: Path | None, seed: int,
                       test_fraction: float) -> None:
    """Write the example data (scikit-learn's breast_cancer, a stratified split)."""
    from kmodel.datasets import breast_cancer

    breast_cancer(train_path, test_path, seed=seed, test_fraction=test_fraction,
                  blend=blend_path)
    click.echo(f"wrote {train_path} and {test_path}" + (f" and {blend_path}" if blend_path
                                                         else ""))


@data.command("import")
@click.argument("table", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The input file to write (/inputs/x, /targets/<name>, /metadata/id).")
@click.option("--id", "id_column", help="The column of row ids (default: rows numbered).")
@click.option("--target", "targets", multiple=True, help="A target column (repeat for more).")
@click.option("--features", help="The feature columns, comma-separated (default: every other "
                                 "column).")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float16", "float32", "float64"]))
def data_import(table: Path, output: Path, id_column: str | None, targets: tuple[str, ...],
                features: str | None, dtype: str) -> None:
    """Write TABLE (CSV, TSV, Parquet, .npy or .npz) as a kmodel input file, streamed (a
    table of any size in bounded memory). Ids must be unique and features numbers."""
    from kmodel.tables import import_table

    done = import_table(table, output, id_column=id_column, targets=targets,
                        features=features.split(",") if features else None, dtype=dtype)
    click.echo(f"wrote {output}: {done.rows:,} rows, {len(done.features)} features"
               + (f", targets {', '.join(done.targets)}" if done.targets else ""))


# --- workflows --------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cores", type=click.IntRange(1),
              help="CPUs to use at most (default 1). With a cluster profile (--profile "
                   "slurm) leave it out: it would cap every job's CPUs at N, where each "
                   "job otherwise asks for its model's threads.")
@click.argument("snakemake_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, config: Path, cores: int | None,
        snakemake_args: tuple[str, ...]) -> None:
    """Run a composition end to end with Snakemake (extra arguments go to Snakemake).

    Builds every env, predicts with every base model on the train and test split, trains
    the ensembler on the train predictions, applies it to the test split and prints the
    scores. Only what changed since the last run is redone.
    """
    from kmodel import workflow

    # Snakemake's whole log with -v or when its own output was asked for (--summary, ...);
    # otherwise a line per finished job (the whole log is in .snakemake/log/)
    summary = None if ctx.obj.get("verbose") or workflow.prints_itself(snakemake_args) \
        else workflow.LogSummary()

    def echo(line: str) -> None:
        for shown in [line] if summary is None else summary.feed(line):
            click.echo(shown, err=True)

    done = workflow.run(config, _registry(ctx), cores=cores, extra=snakemake_args, echo=echo)
    plan = done.plan
    if done.kind == "dry":
        from kmodel.status import status as outputs

        entries = [e for e in outputs(plan, _registry(ctx)) if e.state != "fresh"]
        click.echo(f"\n{plan.config.name}: dry run, nothing was run; "
                   + (f"{len(entries)} output(s) to make:" if entries else "all outputs fresh"))
        for e in entries:
            click.echo(_status_line(e))
    if done.kind != "ran":
        return  # Snakemake printed what was asked (--summary, --list-rules, ...)
    click.echo(f"\n{plan.config.name}: finished in {done.seconds:.1f} s; results in "
               f"{plan.root}/")
    scores = workflow.read_scores(plan)
    if scores is not None:
        click.echo(f"  predictions  {plan.root / 'preds'}/<model>/<split>.h5")
        click.echo(f"  ensemble     {plan.ensemble}")
        click.echo(f"  scores       {plan.scores}\n")
        click.echo(_score_table(scores))


def _status_line(e: Any) -> str:
    why = f"  ({', '.join(e.reasons)})" if e.reasons else ""
    return f"{e.state:<8} {e.path}{why}"


@cli.command("status")
@click.argument("config", type=click.Path(path_type=Path))
@json_option
@click.pass_context
def status_(ctx: click.Context, config: Path, as_json: bool) -> None:
    """Say for every output of a composition whether it is fresh, stale (and why: spec,
    model code, weights, env lock, input, kmodel version, an upstream output) or missing.

    Reads recorded provenance and hashes only: no env is built, no model runs. Exits 1
    when any output is stale or missing.
    """
    from kmodel.api import status_of

    entries = status_of(config, reg=_registry(ctx))
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
    else:
        for e in entries:
            click.echo(_status_line(e))
    if any(e.state != "fresh" for e in entries):
        ctx.exit(1)


@cli.command("test")
@click.argument("models", nargs=-1, shell_complete=_complete("model"))
@click.option("--all", "all_", is_flag=True, help="Every model that has a test: in its spec.")
@json_option
@click.pass_context
def test_(ctx: click.Context, models: tuple[str, ...], all_: bool, as_json: bool) -> None:
    """Run each model on the example in its spec's `test:` and compare with the expected
    output within its rtol/atol (agreement across CPUs is within tolerance, not bit for bit).

    A failure names the output, how many rows are off, and the worst row: its id, the
    values, the absolute and relative differences. Exits 1 if any test fails.
    """
    from kmodel.modeltest import failed, run_tests

    report = run_tests(_registry(ctx), models, every=all_)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    for r in [] if as_json else report:
        if "output" not in r:
            click.echo(f"{r['state']:<8} {r['model']}  {r.get('detail', '')}".rstrip())
        elif r["state"] == "ok":
            click.echo(f"ok       {r['model']} /preds/{r['output']}: {r['rows']} rows within "
                       "tolerance")
        else:
            click.echo(f"FAIL     {r['model']} /preds/{r['output']}: {r['bad']} of {r['rows']} "
                       f"rows out of tolerance; {r['detail']}")
    if failed(report):
        ctx.exit(1)


@cli.command()
@click.argument("prediction", type=click.Path(path_type=Path))
@json_option
@click.pass_context
def verify(ctx: click.Context, prediction: Path, as_json: bool) -> None:
    """Recompute what PREDICTION records (the model's spec, code, weights, env lock, the
    input's sha256) and say what no longer matches. Exits 1 if anything differs."""
    from kmodel.provenance import verify as run_verify

    checks = run_verify(_registry(ctx), prediction)
    if as_json:
        click.echo(json.dumps([{"check": w, "ok": ok, "detail": d} for w, ok, d in checks],
                              indent=2))
    else:
        for what, ok, detail in checks:
            click.echo(f"{'ok' if ok else 'CHANGED':<8} {what:<15} {detail}")
    if not all(ok for _, ok, _ in checks):
        ctx.exit(1)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (SLURM, CI, `kill`) and Ctrl-C: cleanup runs, exit 128 + the signal. Further
    signals are ignored so that the cleanup itself (bounded: children get 5-30 s) is not cut
    short and leaves no lock or temporary file behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(signum)


@cli.command()
@click.option("--profiles", is_flag=True, help="Print the folder of shipped cluster profiles.")
def snakefile(profiles: bool) -> None:
    """Print the path of kmodel's Snakefile, to use as a module in your own pipeline
    (after your own `rule all`: the first rule is Snakemake's default target).

    \b
    module kmodel:
        snakefile: "<this path>"
        config: config["kmodel"]
    use rule * from kmodel exclude all as kmodel_*
    """
    from kmodel.workflow import snakefile as path
    from kmodel.workflow import workflows_dir

    click.echo(workflows_dir() / "profiles" if profiles else path())


# --- global options, also after the subcommand -------------------------------------


def _more_verbose(ctx: click.Context, _: click.Parameter, value: int) -> None:
    if value:
        ctx.obj["verbose"] = ctx.obj.get("verbose", 0) + value
        logging.getLogger().setLevel(logging.DEBUG if ctx.obj["verbose"] > 1 else logging.INFO)


def _more_specs(ctx: click.Context, _: click.Parameter, value: tuple[Path, ...]) -> None:
    if value:
        ctx.obj["where"][0].extend(value)


def _more_envs(ctx: click.Context, _: click.Parameter, value: tuple[str, ...]) -> None:
    if value:
        ctx.obj["where"][1].extend(_path_list(value))


def _global_options(group: click.Group) -> None:
    """Give every subcommand the group's -v, --specs and --envs, so `kmodel ls --specs DIR`
    works like `kmodel --specs DIR ls` (not `run`: what follows its CONFIG is Snakemake's)."""
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            _global_options(cmd)
        elif cmd.name != "run":
            cmd.params += [
                click.Option(["-v", "--verbose"], count=True, expose_value=False,
                             callback=_more_verbose, help="As `kmodel -v`."),
                click.Option(["--specs"], multiple=True, expose_value=False,
                             type=click.Path(exists=True, file_okay=False, path_type=Path),
                             callback=_more_specs, help="As `kmodel --specs`."),
                click.Option(["--envs"], multiple=True, expose_value=False, metavar="PATHS",
                             callback=_more_envs, help="As `kmodel --envs`."),
            ]


_global_options(cli)


def _unraisable(hook: Any) -> Any:
    """h5py reports a failed buffered write when it frees a dataset, as an "Exception
    ignored" traceback; kmodel reports the failure itself, in one line. A signal raised
    where an exception cannot travel is sent again."""
    def quiet(info: Any) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            # a signal that landed where Python cannot raise it (a fork hook, a finalizer)
            # would be lost, its handler gone: it is sent again, to land in the command
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, _terminate)
            os.kill(os.getpid(), signum_of(info.exc_value))
            return
        if "h5py" in repr(getattr(info, "object", "")) or "ObjectID" in str(info.err_msg or ""):
            log.debug("h5py: %s", info.exc_value)
            return
        hook(info)
    return quiet


def main() -> None:
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. nohup, background jobs
            signal.signal(signum, _terminate)
    if hasattr(signal, "SIGXFSZ"):  # a file size limit (ulimit -f) gives EFBIG, not a crash
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        try:
            cli(prog_name="kmodel")
        except BrokenPipeError:  # `kmodel ls | head`: the reader is gone, nothing to say
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except KeyboardInterrupt as e:  # a signal after the command's own handling ended
            error = Interrupted(signum_of(e), "the command had finished")
            click.echo(f"Error [{error.code}]: {error}", err=True)
            sys.exit(error.exit_code)
    except SystemExit as e:
        if _WRITE_FAILED:  # HDF5 may crash at exit closing a file whose write failed
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
        raise
    finally:  # the interpreter's shutdown: a signal now ends it in one line, no traceback
        _after_the_command()


def _after_the_command() -> None:
    from kmodel._signals import answer_quietly

    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    answer_quietly()


if __name__ == "__main__":
    main()
