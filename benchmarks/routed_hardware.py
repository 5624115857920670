"""Trained routers through the HPU: what each run's routing costs in loss and saves on the chip.

    python -m benchmarks.routed_hardware RUN... [--data PACK] [--config FILE] [-o JSON]

For each finished routed run (`hpu train`) and each held-out split, the same steps as
`hpu train-hardware RUN --capture` then `hpu sim` and `hpu power` (docs/TRAINING.md):
- the loss by how the routers choose (`training.hardware.router_quality`: the float top-k, the HPU's
  routing step on 16-bit scores, the untrained norm router, the causal choice), on `--sequences`
  held-out sequences of one router block each;
- the split's first sequence captured as the trained model runs it, one head's rows in token order
  with their router logits, simulated under Icarus bit for bit against the golden model: the
  Verilog router chooses the routed tokens, the host sends their rows (and, for a run trained with
  route_window W, every unrouted token's last W keys as a row of its own), against every token's
  whole row; the gate as the run trained (held open in both for a run trained without it);
- both dumps read by `hpu power` with the calibrated energy table: the row-level dark silicon.

The HPU is `--config` set as the run's model ran (`training.hardware.hpu_for`: its head width, its gate
or the gate held open, its routers' block, capacity and logit width); its widths, lanes and max_keys
are the configuration's. The figures are ratios against the dense run of the same rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import write
from hpu.config import HPUConfig
from hpu.files import read_json
from power.flow import run_workload
from sim.job import Options
from sim.runner import generated_rtl

ENERGY = Path("benchmarks/results/calibration/energy.toml")


def measure(run: Path, base: HPUConfig, data: str | None, sequences: int, work: Path, energy: Path | None) -> dict:
    from training import hardware
    from training.loop import MODEL, RESULT, run_corpus

    result = read_json(run / RESULT, "run result", "name the folder of a finished `hpu train` run")
    model = run / MODEL
    cfg, window = hardware.hpu_for(base, model)
    corpus = run_corpus(result, data, progress=False)
    length = cfg.route_block
    rtl = generated_rtl(cfg, work).manifest.parent
    splits = {}
    (work / run.name).mkdir(parents=True, exist_ok=True)
    for split, stream in sorted(corpus.val.items()):
        quality = hardware.router_quality(model, stream, sequences, bits=(16,))
        rows = hardware.capture_rows(model, stream[:length], work / run.name / f"rows-{split}.npz")
        summary, power = run_workload(cfg, f"{run.name}/{split}", str(rows), length,
                                      Options(seed=1, route_window=window), work, rtl, energy)
        c, sims = power["comparison"], summary["runs"]
        r = c["routing"]
        splits[split] = {
            "loss": {k: quality["loss"][k] for k in ("topk", "hpu16", "causal", "norm")},
            "hpu16_agreement": quality["agreement_with_topk"]["hpu16"],
            "norm_agreement": quality["agreement_with_topk"]["norm"],
            "tokens": r["tokens"], "routed_rows": r["rows_computed"]["gated"] - r["window_rows"],
            "window_rows": r["window_rows"], "unrouted_fraction": r["unrouted_fraction"],
            "routing_mismatches": sims["gated"]["routing_mismatches"],
            "mismatches": sims["gated"]["mismatches"] + sims["dense"]["mismatches"],
            "kept_fraction": c["kept_fraction"],
            "saving": {"datapath": r["datapath_saving"], "hpu": c["energy_saving_hpu"],
                       "total": c["energy_saving_total"]},
            "energy_proportionality": c["energy_proportionality"],
            "saving_by_path": c["energy_saving_by_path"],
            "router_share_of_hpu": r["router_share_of_hpu"],
            "hpu_cycles": {name: sims[name]["hpu_cycles"] for name in ("gated", "dense")},
        }
    final = result["final"]
    return {"arm": result["arm"], "seed": result["seed"], "fingerprint": result["fingerprint"],
            "route_window": window, "hpu": cfg.to_dict(),
            "validation_loss": final["loss"], "attention_fraction": final.get("attention_fraction"),
            "splits": splits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders of finished routed `hpu train` runs")
    parser.add_argument("--data", help="the runs' text, a folder or data pack (default: as each run was trained)")
    parser.add_argument("--config", default="configs/routing.toml", help="the HPU (default: configs/routing.toml)")
    parser.add_argument("--sequences", type=int, default=4, help="held-out sequences for the losses (default 4)")
    parser.add_argument("--energy", type=Path, default=ENERGY, help=f"energy table (default: {ENERGY})")
    parser.add_argument("--work", type=Path, default=Path("build/routed_hardware"),
                        help="folder for the Verilog, attention files, dumps and reports")
    parser.add_argument("-o", "--output", default="benchmarks/results/training_cpu/routed_hardware.json")
    args = parser.parse_args()
    base = HPUConfig.load(args.config)
    results = []
    for run in args.runs:
        r = measure(run, base, args.data, args.sequences, args.work, args.energy)
        results.append(r)
        for split, s in r["splits"].items():
            print(f"{r['arm']:16} seed {r['seed']} {split:6} routed {s['routed_rows']}/{s['tokens']} windows "
                  f"{s['window_rows']}  kept {s['kept_fraction']:.3f}  saving datapath {s['saving']['datapath']:.3f} "
                  f"HPU {s['saving']['hpu']:.3f} +traffic {s['saving']['total']:.3f}  loss top-k "
                  f"{s['loss']['topk']:.4f} HPU16 {s['loss']['hpu16']:.4f} ({s['hpu16_agreement']:.4f}) norm "
                  f"{s['loss']['norm']:.4f}  mismatches {s['mismatches']}/{s['routing_mismatches']}", flush=True)
    write(args.output, {"benchmark": "routed_hardware", "config": args.config, "energy": str(args.energy),
                        "simulator": "icarus", "results": results})


if __name__ == "__main__":
    main()
