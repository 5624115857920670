# Two commands do everything on a fresh machine:  make demo  and  make test.
# Set-up is idempotent: the virtual environment is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch; an unpinned torch would pull a CUDA build of several GB.
TORCH  := torch==2.13.0
CELLS  := build/cells/osu018

.PHONY: setup test test-all fuzz demo demo-full quality bench clean iverilog opensta cells data native-headers

setup: $(STAMP) iverilog opensta cells native-headers

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,tools,bench]" "$(TORCH)"
	touch $(STAMP)

# System packages: installed with apt-get where we can (root on Debian/Ubuntu), else make stops and
# says exactly what to install. $(call system_tool,COMMAND,PACKAGE,NAME,OTHER SYSTEMS' HINTS)
define system_tool
	@command -v $(1) >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(3) (apt-get install $(2))"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	else \
		echo "$(3) is missing. Install it, then run make again:"; \
		echo "  Debian/Ubuntu: sudo apt-get install -y $(2)"; \
		$(4) \
		exit 1; \
	fi; \
	command -v $(1) >/dev/null 2>&1 || { echo "apt-get did not provide $(1); install $(3) by hand"; exit 1; }
endef

# Icarus Verilog: the default simulator.
iverilog:
	$(call system_tool,iverilog,iverilog,Icarus Verilog,echo "  Fedora:        sudo dnf install -y iverilog"; echo "  macOS:         brew install icarus-verilog";)

# OpenSTA writes the SDF delays of gate-level simulation (Debian's 2019 build).
opensta:
	$(call system_tool,sta,opensta,OpenSTA,echo "  elsewhere: build it from https://github.com/The-OpenROAD-Project/OpenSTA";)

# Headers the Verilator builds compile against: LZ4 and zlib for its FST writer (hpu sim --waves fst),
# nlohmann/json for the native bench's job and outcome files (hpu sim --sim verilator-native).
native-headers:
	@[ -f /usr/include/lz4.h ] && [ -f /usr/include/zlib.h ] && [ -f /usr/include/nlohmann/json.hpp ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing the LZ4, zlib and JSON headers (apt-get install liblz4-dev zlib1g-dev nlohmann-json3-dev)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liblz4-dev zlib1g-dev nlohmann-json3-dev >/dev/null; \
	else \
		echo "Verilator's builds need the LZ4, zlib and nlohmann/json headers. Install them, then run make again:"; \
		echo "  Debian/Ubuntu: sudo apt-get install -y liblz4-dev zlib1g-dev nlohmann-json3-dev"; \
		exit 1; \
	fi

# The OSU 0.18 um standard cells (Liberty with power tables, Verilog models), for gate-level power:
# Debian's qflow-tech-osu018, unpacked without its dependencies. GPL: fetched here, never committed.
# (power/gatesim.py's CELLS names the same folder.) Unpacked in a scratch folder, checked, and renamed
# into place last: an interrupted fetch leaves no partial library that make would take as built.
cells: $(CELLS)/osu018_stdcells.lib

$(CELLS)/osu018_stdcells.lib:
	@if ! { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }; then \
		echo "The OSU 0.18 um cell library is missing. On Debian or Ubuntu, as root:"; \
		echo "  apt-get download qflow-tech-osu018 && dpkg-deb -x qflow-tech-osu018_*.deb x"; \
		echo "  mkdir -p $(dir $(CELLS)) && mv x/usr/share/qflow/tech/osu018 $(CELLS)"; \
		exit 1; \
	fi
	@echo "fetching the OSU 0.18 um cells (apt-get download qflow-tech-osu018)"
	@rm -rf $(CELLS).fetch && mkdir -p $(CELLS).fetch
	@cd $(CELLS).fetch && \
		{ apt-get download -qq qflow-tech-osu018 2>/dev/null || { apt-get update -qq && apt-get download -qq qflow-tech-osu018; }; } && \
		dpkg-deb -x qflow-tech-osu018_*.deb unpacked
	@fetched=$(CELLS).fetch/unpacked/usr/share/qflow/tech/osu018; lib=$$fetched/osu018_stdcells.lib; \
	if [ ! -s $$fetched/osu018_stdcells.v ] || [ ! -s $$lib ] || \
	   [ "$$(tr -cd '{' < $$lib | wc -c)" != "$$(tr -cd '}' < $$lib | wc -c)" ]; then \
		echo "qflow-tech-osu018 did not unpack a whole cell library (left in $(CELLS).fetch); nothing was installed: run make cells again"; \
		exit 1; \
	fi; \
	rm -rf $(CELLS) && mv $$fetched $(CELLS) && rm -rf $(CELLS).fetch

# Training text: Debian's kernel source and Python documentation (GPL-2.0, PSF), installed with
# apt-get and tokenized into build/data by `hpu data`; never committed, never needed by `make test`.
# (training/data.py's LINUX_TAR and PYDOC name the same paths.)
LINUX_TAR := /usr/src/linux-source-6.1.tar.xz
PYDOC     := /usr/share/doc/python3.11/html/_sources
EXPERIMENT ?= configs/train/ab.toml
data: setup
	@if [ ! -f $(LINUX_TAR) ] || [ ! -d $(PYDOC) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing the training text (apt-get install linux-source-6.1 python3.11-doc)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-source-6.1 python3.11-doc >/dev/null; \
		else \
			echo "The training text is missing. As root on Debian or Ubuntu:"; \
			echo "  apt-get install -y linux-source-6.1 python3.11-doc"; \
			exit 1; \
		fi; \
	fi
	$(BIN)/hpu data $(EXPERIMENT)

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

# Slow simulations as well (kept out of the default run; faster tests cover the same paths).
test-all: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m ""

# Opt-in: the whole suite, slow simulations included, FUZZ_ROUNDS times with fresh seeds for every
# randomized test and cocotb bench and FUZZ_EXAMPLES hypothesis examples per property. Every seed
# is printed (replay one with HPU_SEED=N, or hypothesis's with --hypothesis-seed=N).
FUZZ_ROUNDS   ?= 1
FUZZ_EXAMPLES ?= 2000
fuzz: setup
	@for round in $$(seq $(FUZZ_ROUNDS)); do \
		hseed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); \
		echo "fuzz round $$round: hypothesis seed $$hseed"; \
		HPU_FUZZ=1 HPU_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "" \
			--hypothesis-seed=$$hseed || { echo "fuzz round $$round failed: hypothesis seed $$hseed"; exit 1; }; \
	done

# make demo: the main job on the default configuration, about 2 minutes of CPU after set-up on a
# 2-core machine: Verilog (linted), the MiniLM rows simulated gated and dense against the golden model, the
# power report, a cross-check of the adversarial rows against the Triton kernel, and out/index.html.
# make demo-full: the same with synthesis (area) and every cross-check, then long rows and the gate's
# quality on MiniLM (tens of minutes).
HPU          := $(BIN)/hpu
SYNTH        :=
CROSSCHECK   := --source adversarial --modes mass --rows 8
DEMO_RECORDS := out/rtl/manifest.json out/sim/summary.json out/power/power.json out/crosscheck/crosscheck.json
FULL_RECORDS := out/sim-long/summary.json out/power-long/power.json out/quality/quality.json

demo: setup
	$(HPU) config --config default
	$(HPU) gen --config default -o out/rtl --lint $(SYNTH)
	$(HPU) sim --config default --rows 24 --source minilm --dense-baseline --vcd out/sim/gated.vcd -o out/sim/summary.json
	$(HPU) power out/sim/gated.vcd --baseline out/sim/gated_dense.vcd --manifest out/rtl/manifest.json --summary out/sim/summary.json -o out/power
	$(HPU) crosscheck --config default $(CROSSCHECK) -o out/crosscheck
	$(BIN)/hpu index -o out $(DEMO_RECORDS)

# These two reach demo's steps too: make passes a target's variables on to its prerequisites.
demo-full: SYNTH := --synth
demo-full: CROSSCHECK := --rows 8
demo-full: demo
	$(HPU) sim --config default --rows 16 --source minilm-long --dense-baseline --vcd out/sim-long/gated.vcd -o out/sim-long/summary.json
	$(HPU) power out/sim-long/gated.vcd --baseline out/sim-long/gated_dense.vcd --manifest out/rtl/manifest.json --summary out/sim-long/summary.json -o out/power-long
	$(HPU) quality --config minilm --permeability 0.25 0.5 1.0 --mass-target 0.9 -o out/quality
	$(BIN)/hpu index -o out $(DEMO_RECORDS) $(FULL_RECORDS)

quality: setup
	$(HPU) quality --config minilm -o out/quality

bench: setup
	$(BIN)/python -m benchmarks.golden_rows
	$(BIN)/python -m benchmarks.hpu_cycles
	$(BIN)/python -m benchmarks.sim_speed
	$(BIN)/python -m benchmarks.vcd_speed
	$(BIN)/python -m benchmarks.dark_silicon

clean:
	rm -rf out build .pytest_cache .hypothesis
