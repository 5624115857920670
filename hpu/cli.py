"""The `hpu` command line: one configuration, loaded once, handed to every subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpu.config import HPUConfig
from hpu.errors import HPUError


def load_config(args: argparse.Namespace) -> HPUConfig:
    cfg = HPUConfig.load(args.config) if args.config else HPUConfig()
    shorthands = [f"{name}={getattr(args, name)}" for name in ("mode", "schedule") if getattr(args, name, None)]
    return cfg.with_overrides(args.set + shorthands)


def _add_config_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", default=default, metavar="FILE.toml",
                        help=f"HPU configuration (default: {default or 'the built-in defaults'})")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one configuration field; repeatable")


def cmd_config(args: argparse.Namespace) -> int:
    if args.describe:
        print(HPUConfig.describe())
        return 0
    cfg = load_config(args)
    for name, value in cfg.to_dict().items():
        print(f"{name:13} = {value!r}")
    print(f"{'(derived)':13}   acc_bits={cfg.acc_bits} z_bits={cfg.z_bits} rho_q={cfg.rho_q}/256 "
          f"tau_q={cfg.tau_q}/256 chunks={cfg.chunks}")
    if args.output:
        cfg.save(args.output)
        print(f"wrote {args.output}")
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    from golden_model import quality

    cfg = load_config(args)
    rows = quality.evaluate(cfg, args.permeability, args.mass_target, progress=not args.quiet)
    paths = quality.write_report(rows, cfg, Path(args.output))
    print(quality.format_table(rows))
    print(f"report: {paths['json']} {paths['png']}")
    return 0


def cmd_gen(args: argparse.Namespace) -> int:
    import json

    from rtl_gen.generate import TOP_NAME, generate
    from rtl_gen.lint import check_icarus, check_verilator

    cfg = load_config(args)
    out = generate(cfg, args.output)
    print(f"verilog:  {out.verilog}")
    print(f"manifest: {out.manifest}")
    if args.lint:
        check_icarus(out.verilog, TOP_NAME)
        warnings = check_verilator(out.verilog, TOP_NAME)
        print(f"lint: Icarus parses it; verilator --lint-only -Wall: 0 errors, {warnings} warnings")
    if args.synth:
        from rtl_gen.synth import synthesize

        area_path = Path(args.output) / "area.json"
        report = synthesize(out.verilog, TOP_NAME, area_path)
        print(f"synthesis ({report['kind']}):")
        print(f"  {'module':32} {'cells':>8} {'NAND2 eq':>10} {'memory bits':>12}")
        for name, mod in sorted(report["modules"].items()):
            print(f"  {name:32} {mod['cells']:8d} {mod['area_nand2_eq']:10.1f} {mod['memory_bits']:12d}")
        total = report["total"]
        print(f"  {'total':32} {total['cells']:8d} {total['area_nand2_eq']:10.1f} {total['memory_bits']:12d}")
        print(f"area: {area_path}")
        manifest = json.loads(out.manifest.read_text())
        manifest["area"] = area_path.name
        out.manifest.write_text(json.dumps(manifest, indent=2))
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    import json

    from golden_model.sources import rows_from
    from sim.job import Job, Options
    from sim.runner import make_job, run

    if args.replay:
        job = Job.load(Path(args.replay))
        runs = [("replay", job)]
    else:
        cfg = load_config(args)
        rows = rows_from(args.source, cfg, args.rows, args.seed)
        options = dict(gaps=args.gaps, backpressure=args.backpressure, seed=args.seed)
        runs = [("gated", make_job(cfg, rows, args.source, Options(**options, vcd=args.vcd)))]
        if args.dense_baseline:
            dense_vcd = str(Path(args.vcd).with_name(Path(args.vcd).stem + "_dense.vcd")) if args.vcd else None
            runs.append(("dense", make_job(cfg, rows, args.source, Options(**options, gate_open=True, vcd=dense_vcd))))
    summary = {"simulator": args.sim, "runs": {}}
    for name, job in runs:
        print(f"{name}: {len(job.rows)} {job.source} rows, mode {job.cfg.mode}, schedule {job.cfg.schedule}, "
              f"{args.sim}", flush=True)
        outcome = run(job, args.sim, build_root=args.build, work_dir=Path(args.build) / f"run-{name}",
                      progress=not args.quiet)
        kept = sum(e.kept for e in job.expected)
        keys = sum(r.n for r in job.rows)
        summary["runs"][name] = {
            "rows_checked": outcome.rows_checked, "mismatches": outcome.mismatches,
            "hpu_cycles": outcome.hpu_cycles, "wall_s": outcome.wall_s,
            "sim_cycles_per_s": outcome.cycles_per_s, "kept_fraction": kept / keys,
            "vcd": job.options.vcd, "config": job.cfg.to_dict(), "source": job.source,
            "gate_open": job.options.gate_open,
        }
        print(f"  rows checked {outcome.rows_checked}, mismatches {outcome.mismatches}, HPU cycles "
              f"{outcome.hpu_cycles}, {outcome.cycles_per_s:,.0f} simulated cycles/s"
              + (f", VCD {job.options.vcd}" if job.options.vcd else ""))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(summary, indent=2))
        print(f"summary: {args.output}")
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    import json

    from power import activity, design, report, saif
    from power.energy import EnergyTable, estimate

    table = EnergyTable.load(args.energy)
    kept = {}
    if args.summary:
        runs = json.loads(Path(args.summary).read_text())["runs"]
        kept = {name: run["kept_fraction"] for name, run in runs.items()}
    out = Path(args.output)
    measured = []
    for name, vcd in (("gated", args.vcd), ("dense", args.baseline)):
        if vcd is None:
            continue
        if not Path(vcd).exists():
            raise HPUError(f"VCD {vcd} does not exist: write one with `hpu sim --vcd PATH`")
        d = design.load(vcd, args.manifest, top_scope=args.top_scope, clock=args.clock, phase=args.phase or None)
        a = activity.measure(d, window=args.window)
        measured.append(report.Run(name, a, estimate(a, table), kept.get(name)))
        print(f"{name}: {vcd}: {a.cycles} cycles, {a.counts.bytes_read / 1e6:.1f} MB", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for run in measured:
        saif.write(run.activity.counts, out / f"{run.name}.saif", design=run.activity.design.manifest["top"])
    paths = report.write(measured, table, out)
    print(Path(paths["markdown"]).read_text().split("## Energy per module")[0].rstrip())
    print(f"report: {paths['html']}")
    return 0


def cmd_crosscheck(args: argparse.Namespace) -> int:
    import json

    from sim.crosscheck import crosscheck, table

    cfg = load_config(args)
    out = Path(args.output)
    cells, device = crosscheck(cfg, args.source, args.modes, args.rows, args.seed, out, sim=args.sim,
                               build_root=Path(args.build))
    text = table(cells)
    kernel = "GPU" if device == "cuda" else "Triton CPU interpreter"
    print(f"golden model vs {args.sim} (cocotb) vs exact kernel ({kernel}):")
    print(text)
    bad = [str(p) for c in cells for p in c.disagreements]
    (out / "crosscheck.md").write_text(text + "\n")
    (out / "crosscheck.json").write_text(json.dumps({
        "config": cfg.to_dict(), "simulator": args.sim, "kernel_device": device, "seed": args.seed,
        "cells": [{"source": c.source, "mode": c.mode, "rows": c.rows, "agree": c.agree,
                   "disagreements": [str(p) for p in c.disagreements]} for c in cells]}, indent=2))
    print(f"report: {out / 'crosscheck.json'}")
    if bad:
        print(f"{len(bad)} disagreements; reproducers:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpu", description="HPU co-design toolkit for mass-gated attention.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="validate and print a configuration")
    _add_config_options(p)
    p.add_argument("--describe", action="store_true", help="list every field with its meaning")
    p.add_argument("-o", "--output", help="save the resulting configuration as TOML")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("gen", help="generate Verilog and a manifest for a configuration")
    _add_config_options(p, default="configs/default.toml")
    p.add_argument("-o", "--output", default="out/rtl", help="output folder")
    p.add_argument("--lint", action="store_true", help="check with Icarus Verilog and verilator --lint-only")
    p.add_argument("--synth", action="store_true", help="generic-gate synthesis with Yosys: cells and area per module")
    p.set_defaults(func=cmd_gen)

    p = sub.add_parser("sim", help="simulate the generated Verilog under cocotb, checked against the golden model")
    _add_config_options(p, default="configs/default.toml")
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--source", choices=["random", "adversarial", "minilm"], default="random")
    p.add_argument("--mode", help="gate mode (shorthand for --set mode=...)")
    p.add_argument("--schedule", help="schedule (shorthand for --set schedule=...)")
    p.add_argument("--dense-baseline", action="store_true", help="run the same rows again with the gate held open")
    p.add_argument("--vcd", help="write a VCD of the HPU while rows are in flight")
    p.add_argument("--sim", choices=["icarus", "verilator"], default="icarus")
    p.add_argument("--gaps", type=float, default=0.0, help="probability per cycle of an idle key source")
    p.add_argument("--backpressure", type=float, default=0.0, help="probability per cycle of a stalled sink")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--replay", help="re-run a replay file written on a mismatch")
    p.add_argument("--build", default="build/sim", help="build folder")
    p.add_argument("-o", "--output", default="out/sim/summary.json", help="summary JSON")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("power", help="toggle activity, silent ratio and energy from VCDs of the HPU")
    p.add_argument("vcd", metavar="GATED.vcd", help="dump of the gated run")
    p.add_argument("--baseline", metavar="DENSE.vcd", help="dump of the same rows with the gate held open")
    p.add_argument("--manifest", default="out/rtl/manifest.json", help="manifest.json written by `hpu gen`")
    p.add_argument("--summary", help="`hpu sim` summary JSON (for the kept fraction)")
    p.add_argument("--energy", help="energy table TOML (default: power/energy_45nm.toml, Horowitz ISSCC 2014)")
    p.add_argument("--clock", default="clk", help="clock net in the HPU's scope")
    p.add_argument("--phase", default="busy", help="1-bit net marking the compute phase ('' for the whole run)")
    p.add_argument("--top-scope", help="dotted VCD scope of the HPU (found from the manifest by default)")
    p.add_argument("--window", type=int, default=64, help="cycles per activity window")
    p.add_argument("-o", "--output", default="out/power", help="report folder")
    p.set_defaults(func=cmd_power)

    p = sub.add_parser("crosscheck", help="golden model vs the Verilog under cocotb vs the Triton exact kernel")
    _add_config_options(p, default="configs/default.toml")
    p.add_argument("--source", nargs="+", default=["random", "adversarial", "minilm"],
                   choices=["random", "adversarial", "minilm"])
    p.add_argument("--modes", nargs="+", default=["dense", "topk", "mass"], choices=["dense", "topk", "mass"])
    p.add_argument("--rows", type=int, default=8, help="rows per source and mode")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sim", choices=["icarus", "verilator"], default="icarus")
    p.add_argument("--build", default="build/sim", help="build folder")
    p.add_argument("-o", "--output", default="out/crosscheck", help="report folder")
    p.set_defaults(func=cmd_crosscheck)

    p = sub.add_parser("quality", help="gate quality on all-MiniLM-L6-v2 (float and fixed point)")
    _add_config_options(p, default="configs/minilm.toml")
    p.add_argument("--permeability", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                   help="permeabilities to sweep")
    p.add_argument("--mass-target", type=float, nargs="+", default=[0.8, 0.9, 0.95],
                   help="mass targets to sweep")
    p.add_argument("-o", "--output", default="out/quality", help="report folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_quality)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HPUError as exc:
        print(f"hpu: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
