"""One clocked process per module: regroups the registers of Yosys's Verilog for event-driven simulators.

Yosys's ``write_verilog`` gives every register its own ``always @(posedge clk)``
block. Icarus Verilog runs each block as a thread that wakes on every clock edge
and loads its reset and enable conditions one by one, so a design of a few
hundred registers spends most of its simulation time waking threads that do
nothing. This pass moves every register block of a module into one block per
clock edge, with the registers that share a reset condition under one ``if``
and those that share an enable under one ``if`` inside it, all behind one wake
condition (a continuous OR of every reset and enable, re-evaluated only when one
of them changes): an idle module then costs one thread and one load per cycle.
Synthesis does not see the wake condition (``ifdef SYNTHESIS``, which Yosys
defines), so the gates are those of the registers alone.

The regrouping keeps the meaning exactly. Each register is still assigned in
one place with a nonblocking assignment, under the same reset and enable
conditions in the same order (reset over enable, or enable over reset for
Yosys's ``$sdffce``), and an ``if`` on x takes the else branch in both forms.
Blocks of any other shape (memory writes) are left as they are.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# The register forms write_verilog emits (backends/verilog/verilog_backend.cc, dump_cell_expr for FFs):
#   q <= d;                                $dff
#   if (E) q <= d;                         $dffe
#   if (R) q <= c;  else q <= d;           $sdff
#   if (R) q <= c;  else if (E) q <= d;    $sdffe   (reset over enable)
#   if (E) if (R) q <= c; else q <= d;     $sdffce  (enable over reset)
# A condition is one bit: a name, an escaped name (which ends in a space) or a bit select, maybe negated.
_NAME = r"(?:\\\S+ |[A-Za-z_][\w$]*)(?:\[[^\]]+\])?"
_COND = rf"!?{_NAME}"
_TARGET = rf"(?P<q>{_NAME})"
_EDGE = r"always @\((?P<edge>(?:pos|neg)edge [^)]+)\)\n"
_FORMS = {
    "dff": rf"    {_TARGET} <= (?P<d>[^;]+);\n",
    "dffe": rf"    if \((?P<en>{_COND})\) {_TARGET} <= (?P<d>[^;]+);\n(?!    else)",
    "sdff": rf"    if \((?P<rst>{_COND})\) {_TARGET} <= (?P<c>[^;]+);\n    else (?P=q) <= (?P<d>[^;]+);\n",
    "sdffe": rf"    if \((?P<rst>{_COND})\) {_TARGET} <= (?P<c>[^;]+);\n"
             rf"    else if \((?P<en>{_COND})\) (?P=q) <= (?P<d>[^;]+);\n",
    "sdffce": rf"    if \((?P<en>{_COND})\)\n      if \((?P<rst>{_COND})\) {_TARGET} <= (?P<c>[^;]+);\n"
              rf"      else (?P=q) <= (?P<d>[^;]+);\n",
}
_PATTERNS = {name: re.compile(r"^  " + _EDGE + form, re.MULTILINE) for name, form in _FORMS.items()}


@dataclass(frozen=True)
class Register:
    edge: str
    target: str
    data: str
    enable: str | None = None
    reset: str | None = None
    reset_value: str | None = None
    enable_over_reset: bool = False


def _registers(module: str) -> tuple[str, list[Register]]:
    """The module without its register blocks, and those registers."""
    found: list[Register] = []
    for name, pattern in _PATTERNS.items():
        def take(match: re.Match) -> str:
            groups = match.groupdict()
            found.append(Register(edge=groups["edge"], target=groups["q"], data=groups["d"],
                                  enable=groups.get("en"), reset=groups.get("rst"),
                                  reset_value=groups.get("c"), enable_over_reset=name == "sdffce"))
            return ""
        module = pattern.sub(take, module)
    return module, found


def _group(registers: list[Register]) -> list[str]:
    lines = []
    by_edge: dict[str, list[Register]] = defaultdict(list)
    for register in registers:
        by_edge[register.edge].append(register)
    for index, (edge, group) in enumerate(by_edge.items()):
        wake = f"\\$wake{index} "
        lines += ["`ifdef SYNTHESIS",
                  f"  always @({edge}) begin",
                  "`else",
                  f"  wire {wake};",
                  f"  assign {wake} = {' | '.join(_wake_terms(group))};",
                  f"  always @({edge}) if ({wake}) begin",
                  "`endif"]
        # Enable-over-reset registers keep their own nesting; the rest group by reset, then enable.
        outer: dict[tuple, list[Register]] = defaultdict(list)
        for register in group:
            key = ("enable", register.enable) if register.enable_over_reset else ("reset", register.reset)
            outer[key].append(register)
        for (kind, condition), members in outer.items():
            if kind == "enable":
                lines.append(f"    if ({condition}) begin")
                lines += _by_condition(members, "reset", "      ")
                lines.append("    end")
            elif condition is None:
                lines += _by_condition(members, "enable", "    ")
            else:
                lines.append(f"    if ({condition}) begin")
                lines += [f"      {r.target} <= {r.reset_value};" for r in members]
                lines.append("    end else begin")
                lines += _by_condition(members, "enable", "      ")
                lines.append("    end")
        lines.append("  end")
    return lines


def _wake_terms(registers: list[Register]) -> list[str]:
    """Conditions one of which holds whenever some register of the group may change.

    A register without an enable changes only when its data differs from it (``!==`` also
    tells x apart, so an x reaching the register still wakes the block)."""
    terms = []
    for register in registers:
        if register.enable_over_reset:
            terms.append(register.enable)
            continue
        if register.reset is not None:
            terms.append(register.reset)
        terms.append(register.enable if register.enable is not None
                     else f"(({register.data}) !== {register.target})")
    return list(dict.fromkeys(terms))


def _by_condition(registers: list[Register], kind: str, indent: str) -> list[str]:
    """Assignments under a shared enable (kind 'enable') or, inside an enable, a shared reset ('reset')."""
    lines = []
    groups: dict[str | None, list[Register]] = defaultdict(list)
    for register in registers:
        groups[getattr(register, kind)].append(register)
    for condition, members in groups.items():
        if condition is None:
            lines += [f"{indent}{r.target} <= {r.data};" for r in members]
        elif kind == "enable":
            lines.append(f"{indent}if ({condition}) begin")
            lines += [f"{indent}  {r.target} <= {r.data};" for r in members]
            lines.append(f"{indent}end")
        else:
            lines.append(f"{indent}if ({condition}) begin")
            lines += [f"{indent}  {r.target} <= {r.reset_value};" for r in members]
            lines.append(f"{indent}end else begin")
            lines += [f"{indent}  {r.target} <= {r.data};" for r in members]
            lines.append(f"{indent}end")
    return lines


def group_registers(verilog: str) -> str:
    """Yosys's Verilog with each module's register blocks merged into one block per clock edge."""
    out = []
    for module in _split(verilog):
        body, registers = _registers(module)
        if registers:
            end = body.rindex("endmodule")
            body = body[:end] + "\n".join(_group(registers)) + "\n" + body[end:]
        out.append(body)
    return "".join(out)


class NotEquivalent(RuntimeError):
    """Yosys could not prove a regrouped module equivalent to the original."""


def prove_equivalent(before: str, after: str, work_dir: Path) -> list[str]:
    """Prove with Yosys (equiv_make / equiv_simple / equiv_induct) that every module of ``after``
    behaves as the same module of ``before``, reading ``after`` as a simulator does (the wake
    guards in, not the synthesis view). Returns the modules proven; raises NotEquivalent."""
    from rtl_gen.tools import yosys

    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "before.v").write_text(before)
    (work_dir / "after.v").write_text(after)
    # Instances of one unit (MAC lanes, dividers) are the same text under different names: prove one.
    modules = list({_body(text): name for name, text in _modules(after).items()}.values())
    script = ["read_verilog before.v", "hierarchy -check", "prep", "design -stash gold",
              "read_verilog -nosynthesis after.v", "hierarchy -check", "prep", "design -stash gate"]
    for module in modules:
        script += ["design -reset", f"design -copy-from gold -as gold {module}",
                   f"design -copy-from gate -as gate {module}", "equiv_make gold gate equiv",
                   "hierarchy -top equiv", "equiv_simple", "equiv_induct",
                   f"log proving {module}", "equiv_status -assert"]
    (work_dir / "prove.ys").write_text("\n".join(script) + "\n")
    done = subprocess.run(yosys() + ["-q", "-l", "prove.log", "prove.ys"], capture_output=True, text=True,
                          cwd=work_dir)
    if done.returncode:
        log = (work_dir / "prove.log").read_text() if (work_dir / "prove.log").exists() else done.stderr
        proving = re.findall(r"proving (\S+)", log)
        raise NotEquivalent(f"module {proving[-1] if proving else '?'}: regrouped registers not proven "
                            f"equivalent ({(done.stderr or log).strip().splitlines()[-1]}); see {work_dir}")
    return modules


def _split(verilog: str) -> list[str]:
    """The text before the first module, then each module from `module` to the next."""
    return re.split(r"(?=^module )", verilog, flags=re.MULTILINE)


def _modules(verilog: str) -> dict[str, str]:
    found = {}
    for text in _split(verilog):
        header = re.match(r"module (\\?\S+?) ?\(", text)
        if header:
            found[header.group(1)] = text
    return found


def _body(module: str) -> str:
    return module.split("\n", 1)[1]
