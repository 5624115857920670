"""The `hpu` command line: it parses, loads the one configuration, and calls library functions.

Every failure ends with one line on stderr and a non-zero exit: 2 for bad input (an HPUError),
1 for an operating-system error the library did not foresee, 130 for Ctrl-C. `hpu -E ...` shows
the traceback instead, for reporting a bug.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Only modules that load none of torch, Amaranth, SciPy or numba: building the parser (`hpu --help`) stays fast.
from golden_model.source_names import FILE_SUFFIXES, SOURCES
from hpu.config import MODES, SCHEDULES, HPUConfig
from hpu.errors import HPUError, InputError
from hpu.files import claim, output_file
from power.calibration_plan import UNITS, WORKLOADS
from rtl_gen.tools import SIMULATORS

SIM_DEFAULTS = {"rows": 100, "source": "random", "seed": 1}


def load_config(args: argparse.Namespace) -> HPUConfig:
    cfg = HPUConfig.load(args.config) if args.config else HPUConfig()
    shorthands = [f"{name}={getattr(args, name)}" for name in ("mode", "schedule") if getattr(args, name, None)]
    cfg = cfg.with_overrides(args.set + shorthands)
    for note in cfg.notes():
        print(f"hpu: note: {note}", file=sys.stderr)
    return cfg


def cmd_config(args: argparse.Namespace) -> int:
    if args.describe:
        print(HPUConfig.describe())
        return 0
    cfg = load_config(args)
    if args.output:
        output_file(args.output, "configuration file")
    print(cfg.show())
    if args.output:
        cfg.save(args.output)
        print(f"wrote {args.output}")
    return 0


def cmd_gen(args: argparse.Namespace) -> int:
    from rtl_gen.generate import OUTPUTS, TOP_NAME, generate
    from rtl_gen.lint import check_icarus, check_verilator
    from rtl_gen.synth import AREA, format_area

    cfg = load_config(args)
    with claim(args.output, outputs=OUTPUTS):
        out = generate(cfg, args.output, synth=args.synth)
        if out.area:
            print(format_area(out.area))
            print(f"area:     {Path(args.output) / AREA}")
        print(f"verilog:  {out.verilog}")
        print(f"manifest: {out.manifest}")
        if args.lint:
            check_icarus(out.verilog, TOP_NAME)
            warnings = check_verilator(out.verilog, TOP_NAME)
            print(f"lint: Icarus parses it; verilator --lint-only -Wall: 0 errors, {warnings} warnings")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from sim.job import Options
    from sim.session import Outputs, replay, simulate

    if args.replay:
        ignored = [f"--{name.replace('_', '-')}" for name in ("rows", "source", "seed", "mode", "schedule", "vcd",
                                                              "gaps", "backpressure", "config", "route_window")
                   if getattr(args, name) is not None] + (["--set"] if args.set else []) \
            + (["--dense-baseline"] if args.dense_baseline else [])
        if ignored:
            raise InputError(f"{', '.join(ignored)} cannot be combined with --replay: a replay file carries its "
                             "own configuration, row and options")
        replay(Path(args.replay), args.sim, Path(args.build), progress=not args.quiet)
        return 0
    cfg = load_config(args)
    source = args.source or SIM_DEFAULTS["source"]
    options = Options(gaps=args.gaps or 0.0, backpressure=args.backpressure or 0.0,
                      seed=SIM_DEFAULTS["seed"] if args.seed is None else args.seed, route_window=args.route_window or 0)
    outputs = Outputs(summary=Path(args.output) if args.output else None, vcd=Path(args.vcd) if args.vcd else None,
                      waves=args.waves)
    simulate(cfg, source, SIM_DEFAULTS["rows"] if args.rows is None else args.rows,
             options, outputs, args.dense_baseline, args.sim, Path(args.build), progress=not args.quiet,
             note=lambda line: print(f"hpu: note: {line}", file=sys.stderr))
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    from power.flow import Request, analyze

    req = Request(vcd=Path(args.vcd), baseline=Path(args.baseline) if args.baseline else None,
                  manifest=Path(args.manifest) if args.manifest else None,
                  summary=Path(args.summary) if args.summary else None,
                  energy=Path(args.energy) if args.energy else None,
                  clock=args.clock or ("clk" if args.manifest else None), phase=args.phase or None,
                  top_scope=args.top_scope, window=args.window)
    paths = analyze(req, Path(args.output))
    if "markdown" in paths:
        print(Path(paths["markdown"]).read_text().split("## Energy per module")[0].rstrip())
        print(f"report: {paths['html']}")
    else:
        print(f"report: {paths['json']} (no manifest: any design's activity, energy uncalibrated)")
    return 0


def cmd_crosscheck(args: argparse.Namespace) -> int:
    from sim.crosscheck import OUTPUTS, crosscheck, table, write_report

    cfg = load_config(args)
    out = Path(args.output)
    with claim(out, "report folder", OUTPUTS):
        cells, device = crosscheck(cfg, args.source, args.modes, args.rows, args.seed, out, sim=args.sim,
                                   build_root=Path(args.build))
        kernel = "GPU" if device == "cuda" else "Triton CPU interpreter"
        print(f"golden model vs {args.sim} (cocotb) vs exact kernel ({kernel}):")
        print(table(cells))
        print(f"report: {write_report(cells, cfg, args.sim, device, args.seed, out)}")
    bad = [str(p) for c in cells for p in c.disagreements]
    if bad:
        print(f"{len(bad)} disagreements; reproducers:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    from golden_model import quality

    cfg = load_config(args)
    swept = quality.settings(cfg, args.permeability, args.mass_target, args.route_fraction)
    router = quality.fitted_router(args.router, swept)   # refused before the folder is claimed
    with claim(args.output, "report folder", quality.OUTPUTS):
        rows = quality.evaluate(cfg, swept, progress=not args.quiet, router=router)
        paths = quality.write_report(rows, cfg, Path(args.output), args.router)
    print(quality.format_table(rows))
    print(f"report: {paths['json']} {paths['png']}")
    return 0


def cmd_fit_minilm_router(args: argparse.Namespace) -> int:
    from training import minilm_router

    paths = minilm_router.fit_to_folder(args.output, args.route_fraction, args.steps, args.texts, args.seed, args.lr,
                                        Path(args.text) if args.text else None,
                                        log=None if args.quiet else print)
    print(f"router: {paths['router']} (hpu quality --router {paths['router']}); fit: {paths['result']}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweep.engine import sweep

    paths = sweep(Path(args.spec), Path(args.output), args.scheduler, args.workers)
    print(f"report: {paths['html']} ({paths['csv'].name}, {paths['parquet'].name}, {paths['pareto'].name})")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from power import calibrate

    cfg = load_config(args)
    workloads = {name: WORKLOADS[name] for name in args.workloads} if args.workloads else None
    paths = calibrate.calibrate(cfg, args.config or "built-in defaults", args.units, args.rows, Path(args.work),
                                Path(args.output), workloads)
    print(Path(paths["summary"]).read_text())
    print("wrote " + " ".join(str(p) for p in paths.values()))
    print(f"use it: hpu power ... --energy {paths['table']}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from hpu.report_index import write_index

    print(f"index: {write_index([Path(r) for r in args.records], Path(args.output))['html']}")
    return 0


def _experiment(args: argparse.Namespace):
    from training.config import TrainConfig

    return TrainConfig.load(args.config).with_source(getattr(args, "data", None))


def cmd_data(args: argparse.Namespace) -> int:
    from training import data

    cfg = _experiment(args)
    if args.pack:
        output_file(args.pack, "data pack", suffix=data.PACK_SUFFIX)
    corpus = data.prepare(cfg.data, progress=not args.quiet)
    print(corpus.describe())
    if args.pack:
        print(f"pack: {data.pack(cfg.data, args.pack, progress=not args.quiet)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.loop import run_experiment

    cfg = _experiment(args)
    for name in args.arm or []:
        cfg.arm(name)
    try:
        results = run_experiment(cfg, args.output, args.arm, args.seed, progress=not args.quiet, jobs=args.jobs)
    except KeyboardInterrupt:
        print("hpu: interrupted; finished runs are kept, and a run cut short resumes from its last state "
              f"(saved every {cfg.run.checkpoint_every} steps) when trained again", file=sys.stderr)
        return 130
    for r in results:
        final = r["final"]
        print(f"{r['arm']} seed {r['seed']}: validation loss {final['loss']:.4f} (code "
              f"{final.get('loss_code', float('nan')):.4f}, prose {final.get('loss_prose', float('nan')):.4f}), "
              f"kept {final['kept_fraction']:.3f}, {r['tokens_per_s']:,.0f} tokens/s on {r['versions']['device']}")
    return 0


def cmd_train_report(args: argparse.Namespace) -> int:
    from training import report

    with claim(args.output, "report folder", (report.JSON, report.TABLE, report.PLOT)):
        summary = report.report(args.runs, args.output)
    print(report.markdown(summary))
    print(f"report: {Path(args.output) / report.JSON} {Path(args.output) / report.PLOT}")
    return 0


def cmd_fit_predictors(args: argparse.Namespace) -> int:
    from hpu.files import read_json, write_json
    from training import data, predictors, routing
    from training.config import TrainConfig
    from training.loop import MODEL, RESULT, save_checkpoint, start_ranks, versions, world_size

    if world_size() > 1:
        raise InputError("fit-predictors runs on one device: start it without torchrun")
    run = read_json(Path(args.run) / RESULT, "run result", "name the folder of a finished `hpu train` run")
    if not run.get("router"):
        raise InputError(f"{args.run} is a run of arm {run['arm']}, which has no routers: take a run of an arm with "
                         "`route`")
    if Path(args.output).resolve() == Path(args.run).resolve():
        raise InputError("-o names the run's own folder, whose checkpoint the fit would replace: choose another")
    cfg = TrainConfig.from_dict(run["config"]).with_source(args.data)
    ranks = start_ranks()
    corpus = data.prepare(cfg.data, progress=not args.quiet)
    if corpus.fingerprint != run["data"]:
        raise InputError(f"the text given is not the token stream {args.run} trained on: pass the run's --data")
    model = routing.load(Path(args.run) / MODEL, attn_implementation=cfg.arm(run["arm"]).attention)
    with claim(args.output, "output folder", (predictors.RESULT, MODEL)):
        fit = predictors.fit_predictors(model.to(ranks.device), cfg, corpus, args.steps, ranks, args.lr,
                                        progress=not args.quiet)
        save_checkpoint(model, corpus, Path(args.output) / MODEL)
        write_json(Path(args.output) / predictors.RESULT,
                   {"run": str(args.run), "arm": run["arm"], "seed": run["seed"], **fit, "versions": versions()})
    for when in ("before", "after"):
        r = fit[when]
        print(f"{when}: predictors agree with the top-k on {r['predictor_accuracy']:.4f} of held-out tokens and "
              f"route {r['predicted_fraction']:.4f} of them (top-k {r['routed_fraction']:.4f}); loss "
              f"{r['loss']:.4f} by the top-k, {r['loss_predicted']:.4f} by the predictors")
    print(f"checkpoint: {Path(args.output) / MODEL}")
    return 0


def cmd_train_hardware(args: argparse.Namespace) -> int:
    from golden_model.quantize import clipping_note
    from hpu.files import read_json, write_json
    from training import hardware
    from training.loop import MODEL, RESULT, run_corpus

    cfg = load_config(args)
    run = read_json(Path(args.run) / RESULT, "run result", "name the folder of a finished `hpu train` run")
    model = Path(args.run) / MODEL
    gated, routed = hardware.trained_with(model)
    # A dense run gets the configuration's gate after the fact: how sparse the rule finds it.
    gate = gated or not routed
    corpus = run_corpus(run, args.data, progress=not args.quiet)
    splits = {split: stream for split, stream in sorted(corpus.val.items()) if len(stream) > args.length}
    with claim(args.output, "report folder", ("hardware.json", "rows-*.npz")):
        result = {split: {} for split in splits}
        for split, stream in splits.items():
            if gate:
                result[split] = hardware.fixed_point_quality(model, cfg, stream, args.sequences, args.length)
            if routed:
                result[split]["router"] = hardware.router_quality(model, stream, args.sequences)
            if args.capture:
                rows = hardware.capture_rows(model, stream[:args.length], Path(args.output) / f"rows-{split}.npz")
                settings = ([f"--config {args.config}"] if args.config else []) + [f"--set {s}" for s in args.set]
                print(f"attention file: {rows} (" + " ".join(["hpu sim --source", str(rows), "--rows", str(args.length),
                                                              *settings, *hardware.sim_arguments(cfg, model)]) + ")")
        write_json(Path(args.output) / "hardware.json", result)
    for split, r in result.items():
        if gate and r["rows_clipped"]:
            print(f"hpu: note: {clipping_note(split, r['rows_clipped'], r['score_peak'], cfg)}", file=sys.stderr)
        if gate:
            print(f"{split}: loss dense {r['loss']['dense']:.4f}, float gate ({r['gate']}) {r['loss']['float_gate']:.4f}, HPU fixed "
                  f"point {r['loss']['fixed_point']:.4f}; kept {r['kept_fraction']['float_gate']:.3f} / "
                  f"{r['kept_fraction']['fixed_point']:.3f}; attention cosine mean {r['attention_cosine_mean']:.4f}")
        if routed:
            q = r["router"]
            print(f"{split}: loss by routing: " + ", ".join(f"{name} {loss:.4f} (agrees {q['agreement_with_topk'][name]:.4f}, "
                                                          f"overlap {q['overlap_with_topk'][name]:.4f})"
                                                          for name, loss in q["loss"].items()))
    print(f"report: {Path(args.output) / 'hardware.json'}")
    return 0


def cmd_train_gap(args: argparse.Namespace) -> int:
    from training import attribution
    from training.loop import run_corpus

    run, _, _ = attribution.check(args.arm_run, args.base_run, args.device)
    corpus = run_corpus(run, args.data, progress=not args.quiet)
    if corpus.fingerprint != run["data"]:
        raise InputError(f"the text given is not the token stream {args.arm_run} trained on: pass the runs' --data")
    with claim(args.output, "report folder", (attribution.JSON, attribution.TABLE, attribution.PLOT)):
        result = attribution.loss_gap(args.arm_run, args.base_run, corpus, args.sequences, args.device,
                                      args.micro_batch)
        attribution.write(result, args.output)
    print(attribution.markdown(result))
    print(f"report: {Path(args.output) / attribution.JSON} {Path(args.output) / attribution.PLOT}")
    return 0


# -- argument types: a bad value is refused by argparse with the option's name ------------------

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a positive, finite number")
    return value


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


class _Distinct(argparse.Action):
    """A list of values each given once: a repeated one would be silently collapsed or run twice."""

    def __call__(self, parser, namespace, values, option_string=None):
        repeated = [str(v) for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise argparse.ArgumentError(self, f"{', '.join(dict.fromkeys(repeated))} given more than once: "
                                               "name each value once")
        setattr(namespace, self.dest, values)


def _add_config_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", default=default, metavar="FILE.toml",
                        help=f"HPU configuration (default: {default or 'the built-in defaults'})")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one configuration field; repeatable (`hpu config --describe` lists them)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpu", description="HPU co-design toolkit for mass-gated attention.")
    parser.add_argument("-E", "--traceback", action="store_true", help="show the Python traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="validate and print a configuration")
    _add_config_options(p)
    p.add_argument("--describe", action="store_true", help="list every field with its meaning")
    p.add_argument("-o", "--output", help="save the resulting configuration as TOML")
    p.set_defaults(func=cmd_config, memory_hint="ask for a smaller configuration")

    p = sub.add_parser("gen", help="generate Verilog and a manifest for a configuration")
    _add_config_options(p)
    p.add_argument("-o", "--output", default="out/rtl", help="output folder (default: out/rtl)")
    p.add_argument("--lint", action="store_true", help="check with Icarus Verilog and verilator --lint-only")
    p.add_argument("--synth", action="store_true", help="generic-gate synthesis with Yosys: cells and area per module")
    p.set_defaults(func=cmd_gen, memory_hint="ask for a smaller configuration (fewer lanes, a smaller max_keys)")

    p = sub.add_parser("sim", help="simulate the generated Verilog under cocotb, checked against the golden model")
    _add_config_options(p)
    p.add_argument("--rows", type=_positive, help=f"rows to simulate; with a router (route_block > 0), tokens, in blocks of "
                   f"route_block with their router logits: an attention file's own (captured from a routed model), "
                   f"else random (default: {SIM_DEFAULTS['rows']})")
    p.add_argument("--source", metavar="SOURCE", help=f"stimulus: {', '.join(SOURCES)}, or an attention file "
                   f"({' or '.join(FILE_SUFFIXES)}, see golden_model.capture) (default: {SIM_DEFAULTS['source']})")
    p.add_argument("--mode", choices=MODES, help="gate mode (shorthand for --set mode=...)")
    p.add_argument("--schedule", choices=SCHEDULES, help="schedule (shorthand for --set schedule=...)")
    p.add_argument("--dense-baseline", action="store_true", help="run the same rows again with the gate held open "
                   "(with a router: every token's row, none routed away)")
    p.add_argument("--vcd", metavar="PATH.vcd",
                   help="write a dump of the HPU while rows are in flight (the dense run's: PATH_dense.vcd)")
    p.add_argument("--waves", choices=("vcd", "fst"), default="vcd",
                   help="the dump's format: VCD, or FST (many times smaller; `hpu power` reads both; --vcd then "
                        "names PATH.fst). Verilator dumps the whole harness for the whole run (it ignores $dumpvars' "
                        "scope and $dumpoff) in two states, from a build of its own (default: vcd)")
    p.add_argument("--sim", choices=SIMULATORS, default="icarus", help="simulator (default: icarus)")
    p.add_argument("--gaps", type=float, help="probability per cycle of an idle key source (default 0)")
    p.add_argument("--backpressure", type=float, help="probability per cycle of a stalled sink (default 0)")
    p.add_argument("--seed", type=int, help=f"seed of the stimulus and the harness (default: {SIM_DEFAULTS['seed']})")
    p.add_argument("--route-window", type=int, metavar="W",
                   help="with a router: the host also sends each unrouted token's last W keys as a row (a model "
                        "trained with route_window W; default 0, none)")
    p.add_argument("--replay", metavar="FILE.json", help="re-run a replay file written on a mismatch")
    p.add_argument("--build", default="build/sim", help="build folder, shared by runs (default: build/sim)")
    p.add_argument("-o", "--output", default="out/sim/summary.json", help="summary JSON (default: out/sim/summary.json)")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_sim, memory_hint="ask for fewer --rows or a smaller configuration")

    p = sub.add_parser("power", help="toggle activity, silent ratio and energy from VCDs (of the HPU, or any design)")
    p.add_argument("vcd", metavar="GATED.vcd", help="dump of the gated run (or of any design)")
    p.add_argument("--baseline", metavar="DENSE.vcd", help="dump of the same rows with the gate held open")
    p.add_argument("--manifest", help="manifest.json written by `hpu gen`; without it any design's dump is "
                                      "read: toggles, silent ratio per scope, SAIF, uncalibrated energy")
    p.add_argument("--summary", help="`hpu sim` summary JSON: kept fraction, and a check that the dumps are its runs'")
    p.add_argument("--energy", help="energy table TOML (default: power/energy_45nm.toml, Horowitz ISSCC 2014)")
    p.add_argument("--clock", help="clock net: in the HPU's scope (default clk), or without a manifest a name or "
                                   "dotted reference (default: found by name and edges)")
    p.add_argument("--phase", default="busy", help="1-bit net marking the compute phase ('' for the whole run)")
    p.add_argument("--top-scope", help="dotted VCD scope of the HPU (found from the manifest by default)")
    p.add_argument("--window", type=_positive, default=64, help="cycles per activity window")
    p.add_argument("-o", "--output", default="out/power", help="report folder")
    p.set_defaults(func=cmd_power, memory_hint="analyze a shorter dump (fewer rows in `hpu sim`) or pass a "
                                                "larger --window")

    p = sub.add_parser("calibrate", help="fit the energy model per unit against gate level (OSU 0.18 um cells, "
                                         "SDF delays): an energy table for `hpu power --energy`")
    _add_config_options(p, default="configs/small.toml")
    p.add_argument("--units", nargs="+", default=["lane", "gate", "normalizer", "fetch", "ingest"], choices=list(UNITS),
                   action=_Distinct,
                   help="units to calibrate: " + ", ".join(f"{k} ({v[0]})" for k, v in UNITS.items()))
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), action=_Distinct,
                   help="workload classes, at least 3, each held out in turn (default: every class whose rows "
                        "the configuration holds)")
    p.add_argument("--rows", type=_positive, default=8, help="rows per workload class (default: 8)")
    p.add_argument("--work", default="build/calibrate", help="folder for the RTL runs, netlists and replays")
    p.add_argument("-o", "--output", default="out/calibrate",
                   help="folder for energy.toml, calibration.json, .png and .md (default: out/calibrate)")
    p.set_defaults(func=cmd_calibrate, memory_hint="ask for fewer --rows, --units or --workloads")

    p = sub.add_parser("sweep", help="measure many configurations on Dask: area, cycles, energy and quality per "
                                     "point, cached; CSV, Parquet, Pareto front, plots and an HTML page")
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep: base configuration, fields and their values, "
                   "workloads, metrics (see sweep/spec.py)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="a running Dask scheduler (`dask scheduler`, "
                   "with `dask worker` processes); default: a local cluster")
    p.add_argument("--workers", type=_positive, help="worker processes of the local cluster (default: one per core)")
    p.add_argument("-o", "--output", default="out/sweep", help="folder for the report and the cache (default: out/sweep)")
    p.set_defaults(func=cmd_sweep, memory_hint="ask for fewer --workers")

    p = sub.add_parser("crosscheck", help="golden model vs the Verilog under cocotb vs the Triton exact kernel")
    _add_config_options(p)
    p.add_argument("--source", nargs="+", default=["random", "adversarial", "minilm"], metavar="SOURCE",
                   action=_Distinct, help=f"stimulus sources: {', '.join(SOURCES)} or attention files")
    p.add_argument("--modes", nargs="+", default=["dense", "topk", "mass"], choices=MODES, action=_Distinct,
                   help="gate modes to check")
    p.add_argument("--rows", type=_positive, default=8, help="rows per source and mode (and blocks of router logits per source, with a router)")
    p.add_argument("--seed", type=int, default=1, help="stimulus seed (default: 1)")
    p.add_argument("--sim", choices=SIMULATORS, default="icarus", help="simulator (default: icarus)")
    p.add_argument("--build", default="build/sim", help="build folder")
    p.add_argument("-o", "--output", default="out/crosscheck", help="report folder")
    p.set_defaults(func=cmd_crosscheck, memory_hint="ask for fewer --rows or sources, or a smaller configuration")

    p = sub.add_parser("quality", help="gate quality on all-MiniLM-L6-v2 (float and fixed point)")
    _add_config_options(p, default="configs/minilm.toml")
    p.add_argument("--permeability", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0], action=_Distinct,
                   help="permeabilities to sweep")
    p.add_argument("--mass-target", type=float, nargs="+", default=[0.8, 0.9, 0.95], action=_Distinct,
                   help="mass targets to sweep")
    p.add_argument("--route-fraction", type=float, nargs="*", default=[0.2, 0.5, 0.8], action=_Distinct,
                   help="token routing: fractions of queries routed, each alone and with the configuration's gate "
                        "(none: no routing)")
    p.add_argument("--router", metavar="FILE", help="a fitted router (`hpu fit-minilm-router`): each routed setting "
                   "also runs by its scores, next to the untrained norm router")
    p.add_argument("-o", "--output", default="out/quality", help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_quality, memory_hint="free memory for the MiniLM model and its traces of the "
                                                  "built-in texts")

    p = sub.add_parser("index", help="one HTML page (and its JSON twin) linking reports, with their headline figures")
    p.add_argument("records", nargs="+", metavar="RECORD.json",
                   help="the JSON each command writes last: hpu gen's manifest.json, hpu sim's summary, power.json, "
                        "crosscheck.json or quality.json")
    p.add_argument("-o", "--output", default="out", help="folder of index.html and index.json")
    p.set_defaults(func=cmd_index, memory_hint="index fewer reports")

    def experiment_options(p):
        p.add_argument("config", metavar="EXPERIMENT.toml", help="training experiment (e.g. configs/train/ab.toml)")
        p.add_argument("--data", metavar="PATH", help="train on this folder of text files (or a data pack) "
                                                      "instead of the experiment's [data] source")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("data", help="fetch and tokenize an experiment's training text into the cache (and pack it)")
    experiment_options(p)
    p.add_argument("--pack", metavar="FILE.tar.xz", help="also write the split text and tokenizer as one archive "
                                                         "that rebuilds the same tokens on another machine")
    p.set_defaults(func=cmd_data, memory_hint="ask for fewer train_tokens in the experiment's [data]")

    p = sub.add_parser("train", help="train an experiment's arms (dense, mass gate) on real text; torchrun for GPUs")
    experiment_options(p)
    p.add_argument("--arm", nargs="+", action=_Distinct, help="arms to train (default: every arm)")
    p.add_argument("--seed", nargs="+", type=int, action=_Distinct, help="seeds (default: the experiment's)")
    p.add_argument("--jobs", type=_positive, default=1, help="runs at a time, each its own process on this "
                   "machine's device (a small model leaves a large GPU mostly idle); not under torchrun (default: 1)")
    p.add_argument("-o", "--output", default="out/train", help="results folder: one folder per arm and seed")
    p.set_defaults(func=cmd_train, memory_hint="lower micro_batch in the experiment's [run]")

    p = sub.add_parser("train-report", help="the A/B report of every finished run in a results folder")
    p.add_argument("runs", metavar="RUNS", help="results folder of `hpu train`")
    p.add_argument("-o", "--output", default="out/train-report", help="report folder")
    p.set_defaults(func=cmd_train_report, memory_hint="report fewer runs")

    p = sub.add_parser("train-hardware", help="a trained model's attention through the HPU's fixed point (a dense "
                                              "run gated after the fact by the configuration's gate); a routed "
                                              "model's loss by router choice (top-k, predictor, HPU, norm)")
    p.add_argument("run", metavar="RUN", help="folder of one finished run")
    _add_config_options(p)
    p.add_argument("--data", metavar="PATH", help="the run's text from this folder or data pack instead of its "
                   "experiment's [data] source (the same text, or the held-out splits differ)")
    p.add_argument("--sequences", type=_positive, default=4, help="held-out sequences per split")
    p.add_argument("--length", type=_positive, default=256, help="tokens per sequence of the gate's evaluation and "
                   "of the capture (at most max_keys; the router's evaluation takes one route_block a sequence)")
    p.add_argument("--capture", action="store_true", help="also write each split's first sequence as an attention "
                   "file (rows-SPLIT.npz) for `hpu sim --source`, recorded while the model runs its trained gate")
    p.add_argument("-o", "--output", default="out/train-hardware", help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_hardware, memory_hint="ask for fewer --sequences or a shorter --length")

    p = sub.add_parser("train-gap", help="where an arm's loss gap to a baseline lives: both runs' checkpoints token "
                                         "by token on the same held-out text, the gap split by what the arm's "
                                         "routers let a token read and by position")
    p.add_argument("arm_run", metavar="RUN", help="folder of one finished run (the arm)")
    p.add_argument("base_run", metavar="BASELINE", help="folder of a finished run of the same experiment (dense)")
    p.add_argument("--data", metavar="PATH", help="the runs' text from this folder or data pack instead of their "
                   "experiment's [data] source (it must be the same token stream)")
    p.add_argument("--sequences", type=_positive, help="held-out sequences of the runs' context per split "
                   "(default: the runs' evaluation's, eval_tokens / context)")
    p.add_argument("--device", default="cpu", help="where the checkpoints run: cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--micro-batch", type=_positive, help="sequences a pass (default: the run's micro_batch)")
    p.add_argument("-o", "--output", default="out/train-gap", help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_gap, memory_hint="ask for a smaller --micro-batch")

    p = sub.add_parser("fit-minilm-router", help="fit a learned token router for all-MiniLM-L6-v2, the model frozen, "
                                                 "so that its routed sentence embeddings stay the dense ones")
    p.add_argument("--route-fraction", type=_positive_float, default=0.2, help="share of each text's tokens routed "
                   "in every layer")
    p.add_argument("--steps", type=_whole, default=1500, help="optimizer steps, one text each (0: the random "
                   "projections a fit starts from, a control)")
    p.add_argument("--texts", type=_positive, default=1500, help="prose paragraphs to fit on")
    p.add_argument("--text", metavar="FOLDER", help="reStructuredText or text files to draw the paragraphs from "
                   "(default: the Python documentation's sources)")
    p.add_argument("--lr", type=_positive_float, default=3e-3, help="Adam's learning rate")
    p.add_argument("--seed", type=int, default=0, help="draws the paragraphs, their order and the first weights")
    p.add_argument("-o", "--output", default="out/minilm-router", help="folder for router.npz and fit.json")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_fit_minilm_router, memory_hint="free memory for the MiniLM model")

    p = sub.add_parser("fit-predictors", help="fit a routed run's causal predictors again on its finished, frozen "
                                              "model; report their held-out agreement and loss before and after")
    p.add_argument("run", metavar="RUN", help="folder of one finished run of a routed arm")
    p.add_argument("--data", metavar="PATH", help="the run's text from this folder or data pack instead of its "
                   "experiment's [data] source (it must be the same token stream)")
    p.add_argument("--steps", type=_positive, default=300, help="optimizer steps of the run's batch")
    p.add_argument("--lr", type=_positive_float, help="peak learning rate, decaying to the run's min_lr (default: the run's lr)")
    p.add_argument("-o", "--output", default="out/fit-predictors", help="folder for the checkpoint (model/) and "
                   "predictors.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_fit_predictors)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        # transformers' and the Hub's own bars (weights loading) read this when first imported, which the
        # commands do lazily, after this line.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.traceback:
        return args.func(args)
    try:
        return args.func(args)
    except HPUError as exc:
        print(f"hpu: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpu: interrupted; this run's outputs were not written (earlier ones were removed)", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"hpu: out of memory: {args.memory_hint} (hpu -E shows where)", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # A GPU out of memory is torch.OutOfMemoryError, a RuntimeError; named here without importing torch.
        if type(exc).__name__ != "OutOfMemoryError":
            raise
        print(f"hpu: out of GPU memory: {args.memory_hint} (hpu -E shows where)", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"hpu: {where}{exc.strerror or exc} (hpu -E shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
