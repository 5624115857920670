"""The `hpu` command line: one configuration, loaded once, handed to every subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpu.config import HPUConfig
from hpu.errors import HPUError


def load_config(args: argparse.Namespace) -> HPUConfig:
    cfg = HPUConfig.load(args.config) if args.config else HPUConfig()
    return cfg.with_overrides(args.set)


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
