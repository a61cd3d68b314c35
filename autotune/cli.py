"""`autotune` command line: each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import yaml

from . import zygote  # the one module imported before torch: `run` and `compare` start it first

log = logging.getLogger("autotune")
EXPORT_FORMAT = 1  # what `export` writes and `import` reads


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected comma-separated integers "
                                         "like 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: every dimension must be positive")
    if len(shape) < 2:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected the batch dimension and a "
                                         "sample's, like 1,3,224,224")
    return shape


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return value


def _fraction(text: str) -> float:
    value = _positive_number(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1], e.g. 0.99")
    return value


def _parse_cpus(text: str) -> list[int]:
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad core list {text!r}: expected e.g. 0-3 or 0,2,4") from None
    usable = os.sched_getaffinity(0)
    if not cpus or not cpus <= usable:
        raise argparse.ArgumentTypeError(f"cores {text!r} are not all usable here; usable: "
                                         f"{', '.join(map(str, sorted(usable)))}")
    return sorted(cpus)


def _parse_dtypes(text: str) -> tuple[str, ...]:
    from backend.knobs import KNOBS

    dtypes = tuple(d.strip() for d in text.split(",") if d.strip())
    valid = KNOBS["dtype"].choices
    bad = [d for d in dtypes if d not in valid]
    if bad or not dtypes:
        raise argparse.ArgumentTypeError(f"bad dtype {', '.join(bad) or text!r}: valid are "
                                         f"{', '.join(valid)} (comma-separated)")
    return dtypes


def _options(args):
    """The flags a subcommand was given, as the library's RunOptions (None: not given)."""
    from .study_file import RunOptions

    flags = vars(args)
    return RunOptions(
        model=args.model, batch_size=args.batch_size, input_shapes=tuple(args.input_shape or ()),
        checkpoint=args.checkpoint, dtypes=flags.get("dtype"), trials=flags.get("trials"),
        timeout=flags.get("timeout"), trial_timeout=flags.get("trial_timeout"),
        memory_limit_mb=flags.get("memory_limit"), tolerance=flags.get("tolerance"),
        space=flags.get("space"), storage=flags.get("storage"), study_name=flags.get("study_name"),
        seed=flags.get("seed"), measure_seconds=flags.get("measure_seconds"),
        confirm_rounds=flags.get("confirm_rounds"), confirm_top=flags.get("confirm_top"),
        confirm_max_rounds=flags.get("max_confirm_rounds"), max_wait=flags.get("max_wait"),
        selection_rounds=flags.get("selection_rounds"),
        cpus=flags.get("cpus"), jobs=flags.get("jobs", 1), data=flags.get("data"),
        min_agreement=flags.get("min_agreement"), metric=flags.get("metric"))


def _model_spec(args):
    from .study_file import model_spec
    return model_spec(_options(args))


def _request_from_args(args):
    from .study_file import tune_request
    return tune_request(_options(args), args.study)


class _ProgressLine:
    """One line per trial (a redrawn bar on a terminal): done, best, speedup, time left."""

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream  # the stderr of now, not of import
        self.tty = self.stream.isatty()
        self.bar_drawn = False

    def __call__(self, p) -> None:
        width = 20
        filled = int(width * p.done / max(1, p.total))
        bar = "#" * filled + "-" * (width - filled)
        best = f"best {p.best_ms:.2f} ms" if p.best_ms else "best -"
        speedup = f" ({p.default_ms / p.best_ms:.2f}x vs default)" if p.best_ms and p.default_ms else ""
        left = f", ~{p.left_s / 60:.1f} min left" if p.left_s else ""
        line = f"[{bar}] {p.done}/{p.total} trials | {best}{speedup}{left} | last: {p.last}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.bar_drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """A line of its own, below the bar."""
        self.stream.write(("\n" if self.bar_drawn else "") + text + "\n")
        self.bar_drawn = False
        self.stream.flush()


def _print_candidates(candidates, marks: dict[str, str], out) -> None:
    print(f"  {'candidate':34s} {'median ms':>10s} {'IQR %':>7s}", file=out)
    for name, cand in candidates.items():
        if cand.stats:
            mark = f"  <- {marks[name]}" if name in marks else ""
            print(f"  {name:34s} {cand.stats.median_ms:10.2f} {100 * cand.stats.spread:6.1f}%{mark}", file=out)
        else:
            print(f"  {name:34s} {'failed':>10s}  {cand.failure[:80] if cand.failure else ''}", file=out)


def _print_result(result, out=None) -> None:
    from .confirmation import BACKEND_DEFAULT
    from .worker import EAGER, TORCH_COMPILE_DEFAULT

    out = sys.stdout if out is None else out

    print(file=out)
    print(f"study {result.study_name}: {result.trials_total} trials ({result.trials_complete} complete, "
          f"{result.trials_pruned} pruned, {result.trials_failed} failed) in {result.wall_s / 60:.1f} min",
          file=out)
    if result.message:
        print(result.message, file=out)
    if not result.winner:
        return
    if result.selection:
        print("\nconfirmation, selection (fresh processes, interleaved rounds): picks the config to test",
              file=out)
        tested = {n: "tested" for n, c in result.candidates.items()
                  if c.config is not None and n != BACKEND_DEFAULT}
        _print_candidates(result.selection, tested, out)
        print("\nconfirmation, test (the leader and the defaults again, in new processes and new "
              "rounds): decides", file=out)
    else:
        print("\nconfirmation (fresh processes, interleaved rounds):", file=out)
    _print_candidates(result.candidates, {result.winner.name: "winner"}, out)
    w = result.winner
    print(f"\nbest config ({w.config.config_id}): {json.dumps(w.config.non_default())}", file=out)
    # ratios of the medians in the table above; the test's verdict is the paired rounds' ratio
    others = [n for n in (BACKEND_DEFAULT, TORCH_COMPILE_DEFAULT, EAGER) if n != w.name]
    ratios = any(result.speedup_over(n) for n in others)
    print(f"median latency {w.stats.median_ms:.2f} ms" + ("; its medians' ratios:" if ratios else ""),
          file=out)
    for name in others:
        ratio = result.speedup_over(name)
        unshown = name == BACKEND_DEFAULT and not result.shown_faster
        if ratio and unshown:  # a ratio of medians the test could not tell from noise
            print(f"  {ratio:.2f}x the backend default's speed: not shown faster", file=out)
        elif ratio and ratio >= 1:
            print(f"  {ratio:.2f}x faster than {name}", file=out)
        elif ratio:
            print(f"  {1 / ratio:.2f}x slower than {name}", file=out)
    if result.stored_ids:
        from backend.store import masked_url
        print(f"stored in {masked_url(result.storage_url)} (records {', '.join(map(str, result.stored_ids))})", file=out)


def cmd_run(args) -> int:
    from .tuner import Tuner

    request = _request_from_args(args)
    line = _ProgressLine()
    tuner = Tuner(request, progress=line, say=line.say)
    tuner.preflight()
    from backend.store import masked_url
    print(f"tuning {request.model.name} (batch {request.model.batch_size}, {'+'.join(request.dtypes)}) "
          f"in study {request.resolved_study_name()} at {masked_url(request.storage_url)}", file=sys.stderr)
    result = tuner.run()
    _print_result(result)
    if result.interrupted:
        print("interrupted: rerun the same command to resume the study", file=sys.stderr)
        return 130
    return 0 if result.winner or result.deferred else 1


def cmd_compare(args) -> int:
    from backend.errors import AutotuneError
    from backend.store import accuracy_text

    from .data import NO_DATA
    from .study_file import resolve_data
    from .worker import MIN_AGREEMENT
    from .compare import compare, named_for
    from .confirmation import BEST_STATIC
    from .study_file import parse_duration
    from .tuner import TuneRequest
    from .worker import EAGER

    dtypes = args.dtype or ("float32",)
    if "int8" in dtypes and not args.data:
        raise AutotuneError(NO_DATA)
    if args.metric and not args.data:
        raise AutotuneError(f"--metric {args.metric}: it scores the held-out part of your inputs; "
                            "give them with --data")
    request = TuneRequest(model=_model_spec(args), dtypes=dtypes, storage=args.storage,
                          confirm_rounds=args.rounds,
                          data=args.data and resolve_data(args.data, Path.cwd()),
                          min_agreement=args.min_agreement or MIN_AGREEMENT, metric=args.metric)
    if args.measure_seconds:
        request.confirm_measure = request.confirm_measure.timed_for(args.measure_seconds)
    if args.skip_guards:
        request.confirm_measure = dataclasses.replace(request.confirm_measure, skip_guards=True)
    if args.max_wait:
        request.max_wait_s = parse_duration(args.max_wait)
    result = compare(request, on_start=lambda: print(
        f"comparing {request.model.name} (batch {request.model.batch_size}, {request.threads} "
        f"threads), {args.rounds} interleaved rounds in fresh processes"
        + (", torch.compile's guards skipped" if args.skip_guards else "") + "...", file=sys.stderr))
    eager = result.candidates[EAGER].stats
    best_static = result.best_static(request.dtypes[0])
    static = result.candidates[best_static].stats if best_static else None
    width = max(len(name) for name in result.candidates)
    print(f"{'candidate':{width}s} {'median ms':>10s} {'IQR %':>6s} {'vs eager':>9s} {'vs static':>10s} "
          f"{'GFLOP/s':>8s} {'% FMA peak':>10s}  accuracy (reduced precision, held-out data)")
    for name, cand in result.candidates.items():
        s = cand.stats
        if s is None:
            print(f"{name:{width}s} {'failed':>10s}  {(cand.failure or '')[:70]}")
            continue
        rate, share = result.gflops(name), result.share_of_fma_peak(name)
        share_of_peak = "-".rjust(10) if share is None else f"{100 * share:9.1f}%"
        print(f"{name:{width}s} {s.median_ms:10.2f} {100 * s.spread:5.1f}% "
              f"{eager.median_ms / s.median_ms if eager else 0:8.2f}x "
              f"{static.median_ms / s.median_ms if static else 0:9.2f}x {rate:8.1f} "
              f"{share_of_peak}  {accuracy_text(cand.accuracy)}")
    print(f"\nmodel: {result.gflop:.2f} GFLOP per forward; machine ({request.threads} threads): "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in result.peaks.items() if v)
          + "; FMA peaks are the best of one measurement per round; % FMA peak is of the "
          "candidate's own dtype")
    for dtype in request.dtypes:
        print(f"{named_for(BEST_STATIC, dtype)}: {result.best_static(dtype) or 'every recipe failed'}")
    print(result.noise_note())
    if args.skip_guards:
        print("torch.compile's guards were skipped (set_stance skip_guard_eval_unsafe) in every "
              "torch.compile candidate; eager and ONNX Runtime on the export have none")
    print(f"tuned config applied by the lookup: {result.tuned_source or 'none'}")
    return 0


def cmd_models(args) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    print("\nor any module:callable returning an nn.Module (with --input-shape)", file=sys.stderr)
    return 0


def cmd_knobs(args) -> int:
    from backend.knobs import KNOBS, markdown_table

    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    for knob in KNOBS.values():
        print(f"{knob.name:28s} {knob.valid_values_text():40s} default {knob.dump(knob.default)!r:12s} "
              f"[{'/'.join(sorted(knob.paths))}] {knob.doc}")
    return 0


def _store(args, read_only=True):
    from backend.store import ConfigStore, default_storage_url
    return ConfigStore(args.storage or default_storage_url(), read_only=read_only)


def cmd_ls(args) -> int:
    from backend.store import masked_url

    store = _store(args)
    records = store.list()
    if not records:  # named: a mistyped --storage reads as an empty store
        print(f"no tuned configs in {masked_url(store.url)}")
        return 0
    from .evidence import stored_evidence

    print(f"{'model':22s} {'batch':>5s} {'median ms':>10s} {'speedup':>8s} {'config':18s} "
          f"{'hardware':20s} {'study':24s} evidence")
    rows = []
    for r in records:  # an int8 record, then what the lookup applies to other weights
        rows.append((r, r.model_label))
        if other := _for_other_weights(store, r):
            rows.append((other, "  other weights"))
    for r, label in rows:
        print(f"{label:22s} {str(r.batch_size):>5s} {r.latency['median_ms']:10.2f} "
              f"{r.speedup:7.2f}x {r.config_id:18s} {r.hardware_key:20s} {r.study_name:24s} "
              f"{stored_evidence(r.latency)}")
    return 0


def _for_other_weights(store, record):
    """What the lookup applies in place of an int8 record to weights it was not calibrated for."""
    if record.config.get("dtype") != "int8":
        return None
    return store.best(record.workload_key, record.hardware_key, int8=False)


def cmd_show(args) -> int:
    from backend.errors import AutotuneError
    from backend.store import accuracy_text, masked_url

    store = _store(args)
    records = [r for r in store.list(model_label=args.model)]
    if not records:
        raise AutotuneError(f"no tuned config for model {args.model!r} in {masked_url(store.url)}; "
                            f"`autotune ls` lists what is there")
    def print_record(record):
        precision = store.precision(record.id, with_model=False)
        shown = {**record.to_dict(), **({"accuracy": accuracy_text(precision.accuracy)}
                                        if precision and precision.accuracy else {})}
        print(yaml.safe_dump(shown, sort_keys=False))

    for r in records:
        print_record(r)
        if other := _for_other_weights(store, r):
            print("# what the lookup applies to weights the int8 config above was not calibrated for")
            print_record(other)
    return 0


def cmd_export(args) -> int:
    from backend.errors import AutotuneError
    from backend.store import masked_url, precision_to_dict

    store = _store(args)
    listed = store.list(model_label=args.model)
    if not listed:
        raise AutotuneError("nothing to export: no tuned config"
                            + (f" for model {args.model!r}" if args.model else "")
                            + f" in {masked_url(store.url)}; `autotune ls` lists what is there")
    # an int8 record applies only to the weights it was calibrated for: what the lookup applies
    # to other weights travels with it
    for_other_weights = [_for_other_weights(store, r) for r in listed]
    records = []
    for r in [*listed, *filter(None, for_other_weights)]:
        precision = store.precision(r.id)
        records.append({**r.to_dict(), **({"precision": precision_to_dict(precision)}
                                          if precision else {})})
    text = yaml.safe_dump({"ipex_autotune_export": EXPORT_FORMAT, "records": records}, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            with open(args.output, "w") as f:
                f.write(text)
        except OSError as exc:
            raise AutotuneError(f"cannot write {args.output}: {exc.strerror}; nothing "
                                "exported") from None
        print(f"exported {len(records)} record(s) to {args.output}")
    return 0


def cmd_import(args) -> int:
    from backend.errors import AutotuneError, RecordError
    from backend.store import checked_record, precision_from_dict

    source = "standard input" if args.file == "-" else args.file  # as messages name it
    try:
        if args.file == "-":  # autotune export | autotune import -
            data = yaml.safe_load(sys.stdin)
        else:
            with open(args.file, encoding="utf-8") as f:
                data = yaml.safe_load(f)
    except OSError as exc:
        raise AutotuneError(f"cannot read {source}: {exc.strerror}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = "binary, not text" if isinstance(exc, UnicodeDecodeError) else "not valid YAML"
        raise AutotuneError(f"{source} is {reason}: expected a YAML file written by "
                            "`autotune export`; nothing imported") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise AutotuneError(f"{source} is not an `autotune export` file (expected a mapping "
                            "with a 'records' list); nothing imported")
    found = data.get("ipex_autotune_export", EXPORT_FORMAT)
    if found != EXPORT_FORMAT:
        newer = isinstance(found, int) and found > EXPORT_FORMAT
        raise AutotuneError(f"{source}: export format {found!r}; this ipex-autotune reads format "
                            f"{EXPORT_FORMAT}" + (" (upgrade it to read a newer export)" if newer else "")
                            + "; nothing imported")
    records, precisions = [], []
    for i, item in enumerate(data["records"]):
        try:
            if not isinstance(item, dict):
                raise RecordError(f"got {type(item).__name__}; expected a mapping of record fields")
            fields = {k: v for k, v in item.items() if k != "precision"}
            records.append(checked_record(fields, recompute_hardware_key=True))
            precisions.append(precision_from_dict(item["precision"]) if "precision" in item else None)
        except RecordError as exc:
            raise AutotuneError(f"{source}: record {i}: {exc}; nothing imported") from None
    try:
        ids = _store(args, read_only=False).put_many(records, precisions)
    except RecordError as exc:
        raise AutotuneError(f"{source}: {exc}; nothing imported") from None
    print(f"imported {len(ids)} record(s)")
    return 0


def cmd_explain(args) -> int:
    from .explain import explain_lines

    print("\n".join(explain_lines(_model_spec(args), args.storage)))
    return 0


def cmd_env(args) -> int:
    from .explain import env_lines

    print("\n".join(env_lines(_model_spec(args), args.storage)))
    return 0


def cmd_dashboard(args) -> int:
    from backend.errors import AutotuneError

    from .dashboard import serve

    try:
        serve(args.storage, host=args.host, port=args.port,
              announce=lambda line: print(line, flush=True))
    except OSError as exc:
        raise AutotuneError(f"cannot serve on {args.host}:{args.port}: {exc.strerror}") from None
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a dashboard is meant to stop
    return 0


def cmd_report(args) -> int:
    from backend.errors import AutotuneError

    from .report import report_for

    page = report_for(args.storage, study_name=args.study, model=args.model,
                      batch_size=args.batch_size)
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        raise AutotuneError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"report written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autotune", description="Tune the ipex torch.compile backend "
                                     "for a model on this machine.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO lines")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="tune a model and store the winner")
    run.add_argument("--model", help="torchvision name (see `autotune models`) or module:callable")
    run.add_argument("--study", help="study file (YAML): model, inputs, dtypes, budget, space")
    run.add_argument("--batch-size", type=_positive_int, help="default 1, or --input-shape's first "
                     "dimension")
    run.add_argument("--input-shape", type=_parse_shape, action="append",
                     help="full input shape, e.g. 1,3,256,256; once per forward input")
    run.add_argument("--checkpoint", help="state_dict file to load instead of random weights")
    run.add_argument("--dtype", type=_parse_dtypes, help="allowed dtypes, e.g. float32,bfloat16")
    run.add_argument("--trials", type=_positive_int)
    run.add_argument("--timeout", help="search time budget, e.g. 20m (confirmation comes after)")
    run.add_argument("--trial-timeout", help="hard limit per trial, e.g. 10m")
    run.add_argument("--memory-limit", type=_positive_number, help="MB per trial process")
    run.add_argument("--tolerance", type=_positive_number, help="relative error allowed against eager float32")
    run.add_argument("--data", help="your own inputs: a torch.save file (a tensor of inputs, or a "
                     "list of batches) or module:callable; the first half calibrates int8, the "
                     "rest judges reduced precision's accuracy. int8 needs it")
    run.add_argument("--min-agreement", type=_fraction,
                     help="top-1 agreement with float32 on the held-out data that a bfloat16 or "
                          "int8 config must keep (default 0.99); with --metric, the fraction of "
                          "float32's score it must keep")
    run.add_argument("--metric", help="your own accuracy score instead of top-1 agreement: "
                     "module:callable taking (outputs, inputs) of the held-out data, returning a "
                     "number above zero, higher is better")
    run.add_argument("--space", help="search space name or YAML file")
    run.add_argument("--study-name")
    run.add_argument("--seed", type=int)
    run.add_argument("--measure-seconds", type=_positive_number,
                     help="timed seconds per trial (default 2; confirmation rounds use half); "
                          "the warm-up before them lasts at most as long (default 1)")
    run.add_argument("--confirm-rounds", type=_positive_int,
                     help="interleaved rounds that test the leader against the default, at least "
                          "(default 5); more follow, up to --max-confirm-rounds, until the ratio is "
                          "decided. They come after the selection rounds that pick the leader")
    run.add_argument("--max-confirm-rounds", type=_positive_int, help="default 12")
    run.add_argument("--selection-rounds", type=_positive_int,
                     help="quiet interleaved rounds of every confirmed config that pick the leader "
                          "to test (default 3; up to twice as many when some are busy)")
    run.add_argument("--max-wait", help="how long to wait for a quiet machine before measuring, "
                     "e.g. 3m (the default); after it, it measures anyway, and a measurement that /proc "
                     "saw busy is marked noisy and decides nothing")
    run.add_argument("--confirm-top", type=_positive_int,
                     help="best trials re-measured in the confirmation, besides every static "
                          "recipe and the baselines (default 3)")
    run.add_argument("--cpus", type=_parse_cpus,
                     help="cores to tune on, e.g. 0-3 or 0,2 (default: all this process may use)")
    run.add_argument("--jobs", type=int, default=1,
                     help="parallel workers sharing the study, each pinned to its own cores")
    run.set_defaults(func=cmd_run)

    comp = sub.add_parser("compare", help="measure static recipes and the tuned config, interleaved")
    comp.add_argument("--model", required=True)
    comp.add_argument("--batch-size", type=_positive_int)
    comp.add_argument("--input-shape", type=_parse_shape, action="append")
    comp.add_argument("--checkpoint")
    comp.add_argument("--dtype", type=_parse_dtypes, help="dtypes to include, e.g. float32,bfloat16")
    comp.add_argument("--rounds", type=_positive_int, default=5)
    comp.add_argument("--data", help="your own inputs, as for `run` (int8 needs them; bfloat16 "
                      "and int8 are gated on the held-out part)")
    comp.add_argument("--min-agreement", type=_fraction, help="as for `run` (default 0.99)")
    comp.add_argument("--metric", help="as for `run`")
    comp.add_argument("--measure-seconds", type=_positive_number, help="timed seconds per candidate per round (default 1); "
                      "the warm-up before them lasts at most as long (default 1)")
    comp.add_argument("--max-wait", help="how long to wait for a quiet machine before each round "
                      "(default 3m)")
    comp.add_argument("--skip-guards", action="store_true",
                      help="time every torch.compile call under torch.compiler.set_stance("
                           "'default', skip_guard_eval_unsafe=True), as a server whose inputs "
                           "and globals never change may run (a new shape is still refused; other "
                           "changes would run the stale graph); the peers outside torch.compile "
                           "are unaffected")
    comp.set_defaults(func=cmd_compare)

    sub.add_parser("models", help="list model names").set_defaults(func=cmd_models)
    knobs = sub.add_parser("knobs", help="list the knobs")
    knobs.add_argument("--markdown", action="store_true", help="as the README's table")
    knobs.set_defaults(func=cmd_knobs)
    ls = sub.add_parser("ls", help="list tuned configs in the store")
    ls.set_defaults(func=cmd_ls)
    show = sub.add_parser("show", help="show the stored configs of a model")
    show.add_argument("model")
    show.set_defaults(func=cmd_show)
    export = sub.add_parser("export", help="write stored configs to YAML")
    export.add_argument("-o", "--output", default="-")
    export.add_argument("--model")
    export.set_defaults(func=cmd_export)
    imp = sub.add_parser("import", help="add configs from an export file to the store")
    imp.add_argument("file", help="a file `autotune export` wrote, or - for standard input")
    imp.set_defaults(func=cmd_import)
    explain = sub.add_parser("explain", help="per graph: the config torch.compile(backend=\"ipex\") "
                             "would apply to a model here, from where, and why")
    explain.set_defaults(func=cmd_explain)
    env = sub.add_parser("env", help="print the environment to launch the serving process with")
    env.set_defaults(func=cmd_env)
    for p in (explain, env):
        p.add_argument("--model", required=True,
                       help="torchvision name (see `autotune models`) or module:callable")
        p.add_argument("--batch-size", type=_positive_int)
        p.add_argument("--input-shape", type=_parse_shape, action="append",
                       help="full input shape, e.g. 1,3,256,256; once per forward input")
        p.add_argument("--checkpoint", help="state_dict file to load instead of random weights")
    dashboard = sub.add_parser("dashboard", help="serve optuna-dashboard over the study database "
                               "(read-only; safe while a tuner runs)")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.set_defaults(func=cmd_dashboard)
    report = sub.add_parser("report", help="write one self-contained HTML report of a study")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="the model's study (see `autotune ls`)")
    which.add_argument("--study", help="study name")
    report.add_argument("--batch-size", type=int, help="with --model: pick the study of this batch")
    report.add_argument("-o", "--output", default="report.html", help="HTML file to write")
    report.set_defaults(func=cmd_report)
    for p in (run, comp, ls, show, export, imp, explain, env, dashboard, report):
        p.add_argument("--storage", help="SQLAlchemy URL (default: $IPEX_AUTOTUNE_STORAGE or a "
                                         "per-user SQLite file)")
    return parser


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _command(argv) in ("run", "compare"):  # they fork their workers from a zygote
        zygote.prestart()  # its imports of torch overlap this process's own, not follow them
    try:
        return _main(argv)
    except BaseException:  # a bad flag, --help, any error: a caller that goes on keeps no zygote
        zygote.shutdown()
        raise


def _main(argv: list[str]) -> int:
    from backend.errors import AutotuneError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe must fail here, inside the handler, not at exit
        return code
    except AutotuneError as exc:
        zygote.shutdown()  # a caller that goes on (a test, a script) keeps no importing zygote
        print(f"autotune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        zygote.shutdown()
        print("\nautotune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader (`| head`) stopped reading: send the rest, and the exit's flush, nowhere, and
        # exit as a process ended by SIGPIPE does (128 + 13), so a pipeline never counts a
        # command cut short as a success
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
