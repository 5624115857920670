"""Peak memory of reading a large dump: the reader must not need memory in proportion to the file.

    python -m benchmarks.vcd_memory --vcd DUMP.vcd --manifest MANIFEST.json [--gb 2] [-o JSON]

Builds a dump of about --gb GB from DUMP's body repeated with its timestamps shifted (the same
design and header, so the HPU manifest still applies), then reads it in a fresh process twice:
plain per-bit counting (`power.vcd.scan`) and the whole per-cycle activity (`activity.measure`).
The resident memory of that process (and any child) is sampled every 20 ms; the peak is reported
beside the file's size and beside the import floor (the same process reading nothing). Run `benchmarks.vcd_speed` first for a dump.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import write

READERS = {
    # What the process holds before reading a byte: Python, numpy, numba and the loaded compiled pass.
    "import_floor": "from power.vcd import scan; print(0)",
    "power_vcd_scan": "from power.vcd import scan; c = scan({vcd!r}); print(int(c.rise.sum()))",
    "power_full_analysis": "from power import activity, design; "
                           "a = activity.measure(design.load({vcd!r}, {manifest!r})); print(a.cycles)",
}


def build(source: Path, target: Path, gb: float) -> int:
    """Writes source's header once and its body again and again, each copy's times after the last's."""
    data = source.read_bytes()
    cut = data.index(b"$enddefinitions")
    cut = data.index(b"$end", cut + len(b"$enddefinitions")) + len(b"$end")
    header, body = data[:cut], data[cut:]
    # The copies after the first leave out $dumpvars (its initial values) and the closing $dumpoff.
    times = [int(t) for t in re.findall(rb"\n#(\d+)", body)]
    span = max(times) + 1
    first = body.index(b"\n#")
    again = body[first:]
    off = again.rfind(b"$dumpoff")
    if off >= 0:
        again = again[:again.rfind(b"\n#", 0, off)]
    stamp = re.compile(rb"\n#(\d+)")
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as f:
        f.write(header)
        f.write(body[:first])
        f.write(again)
        copy = 1
        while f.tell() < gb * 1e9:
            shift = copy * span
            f.write(stamp.sub(lambda m: b"\n#%d" % (int(m.group(1)) + shift), again))
            copy += 1
    partial.rename(target)
    return target.stat().st_size


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def peak(code: str) -> tuple[int, float, str]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    top = 0
    while proc.poll() is None:
        top = max(top, tree_rss(proc.pid))
        time.sleep(0.02)
    out = proc.stdout.read().strip()
    if proc.returncode:
        raise SystemExit(f"the reader failed (exit {proc.returncode})")
    return top, time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vcd", type=Path, default=Path("build/bench/vcd_speed.vcd"), help="the dump to repeat")
    parser.add_argument("--manifest", type=Path, help="its HPU manifest (default: the one vcd_speed built)")
    parser.add_argument("--gb", type=float, default=2.0, help="size of the dump to read")
    parser.add_argument("--keep", action="store_true", help="keep the large dump")
    parser.add_argument("-o", "--output", default="benchmarks/results/vcd_memory.json")
    args = parser.parse_args()
    if not args.vcd.exists():
        raise SystemExit(f"{args.vcd} does not exist: run python -m benchmarks.vcd_speed first, or pass --vcd")
    manifest = args.manifest or next(args.vcd.parent.glob("rtl-*/manifest.json"))
    big = args.vcd.with_name(f"vcd_memory_{args.gb:g}gb.vcd")
    size = build(args.vcd, big, args.gb)
    print(f"dump: {big}, {size / 1e9:.2f} GB", flush=True)
    results = {}
    try:
        for name, template in READERS.items():
            rss, seconds, out = peak(template.format(vcd=str(big), manifest=str(manifest)))
            results[name] = {"peak_rss_bytes": rss, "peak_rss_vs_file": rss / size, "seconds": seconds,
                             "mb_per_s": size / 1e6 / seconds, "output": out}
            print(f"{name:22} peak {rss / 2**20:8.0f} MiB ({rss / size:.3f} of the file)  {size / 1e6 / seconds:6.1f} MB/s",
                  flush=True)
    finally:
        if not args.keep:
            big.unlink()
    write(args.output, {"benchmark": "vcd_memory", "source": str(args.vcd), "vcd_bytes": size,
                        "readers": results, "target": {"peak_rss_mib": 300},
                        "peak_rss": "resident memory of the reader's process and its children, summed, sampled every 20 ms"})


if __name__ == "__main__":
    main()
