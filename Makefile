# `make demo` and `make test` do all set-up on a fresh machine.
VENV      ?= .venv
PY        := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES     ?= all
# every job one thread, as many side by side as there are cores (profiles/cpu)
PROFILE   ?= profiles/cpu
FMNIST    := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo verdict plan demo-lt demo-generator rehearsal test lint install demo-data clean-demo docs

install: $(VENV)/.installed

# uv takes the standard PyPI torch (the local CPU wheel breaks torchvision).
$(VENV)/.installed: pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv venv --allow-existing -p python3 $(VENV)
	uv pip install --compile-bytecode -p $(PY) -e '.[test]'
	@touch $@

# Debian's dataset-fashion-mnist where apt is usable; else the demo falls back
# to torchvision's download (config/demo-download.yaml).
demo-data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || true; fi

demo: install demo-data
	@extra=""; [ -f $(FMNIST) ] || extra="config/demo-download.yaml"; \
	$(SNAKEMAKE) --configfile config/demo.yaml $$extra --workflow-profile $(PROFILE) --cores $(CORES) && \
	$(SNAKEMAKE) --configfile config/demo.yaml $$extra --report results/report.html && \
	echo "" && echo "Demo finished. The report (tables, plots, grids, with captions): results/report.html" && \
	echo "Results are under results/:" && \
	echo "  results/tables/summary.md, results/tables/per_class.md, results/tables/ablation.md, results/tables/cost.md, results/tables/generator_quality.md" && \
	echo "  results/analysis/per_class.csv, results/analysis/confusion.png, results/analysis/weak_classes.json" && \
	echo "  results/seeds/<class>/contact_sheet.png, results/inversion/<class>/, results/samples/grid/<class>.png" && \
	echo "  results/judge/<class>.json (class fidelity), results/samples/<mode>/<class>/filtered.csv (filter scores)"

# the demo's shipped generator (workflow/resources/demo_generator) made anew:
# config/demo.yaml's two pretraining jobs (config/demo-generator.yaml), then
# tibalance.ship saves the pipeline (float16 safetensors) with a sidecar naming
# this commit, the command and the CPU
DEMO_GENERATOR := workflow/resources/demo_generator
demo-generator: install demo-data
	@extra=""; [ -f $(FMNIST) ] || extra="config/demo-download.yaml"; \
	$(SNAKEMAKE) --configfile config/demo.yaml $$extra config/demo-generator.yaml --workflow-profile $(PROFILE) \
		--cores $(CORES) results/generator/pretrained_sd/model_index.json && \
	$(PY) -m tibalance.ship results/generator/pretrained_sd results/generator/pretrain_generator.meta.json $(DEMO_GENERATOR)

# the demo as a confirmatory study (config/demo-replicates.yaml): after `make
# demo` it makes the adaptation anew for every retraining seed (replicates
# 1-4), and runs the declared methods (verdict.primary), the references and the
# yardsticks on them
verdict: install demo-data
	@extra=""; [ -f $(FMNIST) ] || extra="config/demo-download.yaml"; \
	$(SNAKEMAKE) --configfile config/demo.yaml $$extra config/demo-replicates.yaml --workflow-profile $(PROFILE) --cores $(CORES) && \
	$(SNAKEMAKE) --configfile config/demo.yaml $$extra config/demo-replicates.yaml --report results/report.html && \
	echo "" && echo "Verdict finished (every run its own replicate): results/tables/verdict.md, results/tables/significance.md," && \
	echo "results/tables/summary.md, results/tables/cost.md (what a replicate costs); the report: results/report.html;" && \
	echo "what a study needs to detect verdict.target_lift: make plan"

# the planner (tibalance.plan) on the finished study: the cheapest replicates x
# seeds that detect verdict.target_lift with 80% power under the declared
# family, priced from the study's cost table. PLAN_CONFIG: the config files the
# study ran with (after `make demo` alone: PLAN_CONFIG=config/demo.yaml)
PLAN_CONFIG ?= config/demo.yaml config/demo-replicates.yaml
plan: install
	$(PY) -m tibalance.plan --configfile $(PLAN_CONFIG) --results results --out results/tables/plan.md

# the demo's study long-tailed (config/demo-lt.yaml: Fashion-MNIST at imbalance
# factor 100, its two few-shot classes weak, the long-tail yardsticks), in
# demo-lt/ beside the demo's own results/
demo-lt: install demo-data
	@extra=""; [ -f $(FMNIST) ] || extra="$(CURDIR)/config/demo-download.yaml"; \
	$(SNAKEMAKE) -s $(CURDIR)/Snakefile --directory demo-lt --configfile $(CURDIR)/config/demo.yaml $$extra \
		$(CURDIR)/config/demo-lt.yaml --workflow-profile $(CURDIR)/$(PROFILE) --cores $(CORES) && \
	$(SNAKEMAKE) -s $(CURDIR)/Snakefile --directory demo-lt --configfile $(CURDIR)/config/demo.yaml $$extra \
		$(CURDIR)/config/demo-lt.yaml --report $(CURDIR)/demo-lt/results/report.html && \
	echo "" && echo "Long-tailed demo finished: demo-lt/results/tables/summary.md (acc_many, acc_medium, acc_few)," && \
	echo "demo-lt/results/tables/verdict.md; the report: demo-lt/results/report.html"

# the real study's shapes on a CPU (config/rehearsal.yaml): SD 1.5's architecture
# with random weights at 512 px, ResNet-50 at 224 px, photo-sized JPEGs drawn
# here, every count cut to the least; in rehearsal/ (timings: its cost table).
# SD-1.5 jobs hold ~12 GB each: one at a time within REHEARSAL_MEM_MB, on
# REHEARSAL_SD_THREADS threads (all of a 2-core machine's)
REHEARSAL_MEM_MB ?= 22000
REHEARSAL_SD_THREADS ?= 2
rehearsal: install
	$(PY) -m tibalance.rehearsal rehearsal/photos
	$(SNAKEMAKE) -s $(CURDIR)/Snakefile --directory rehearsal --configfile $(CURDIR)/config/rehearsal.yaml \
		--workflow-profile $(CURDIR)/$(PROFILE) --cores $(CORES) --resources mem_mb=$(REHEARSAL_MEM_MB) \
		--set-resources textual_inversion:mem_mb=12000 lora:mem_mb=12000 sample:mem_mb=12000 build_generator:mem_mb=12000 \
		--set-threads textual_inversion=$(REHEARSAL_SD_THREADS) lora=$(REHEARSAL_SD_THREADS) sample=$(REHEARSAL_SD_THREADS) && \
	echo "" && echo "Rehearsal finished: rehearsal/results/tables/cost.md (every stage's wall time and peak memory)"

# two pytest workers (pytest-xdist, a test file per unit of work): the SLURM
# cluster's file and the tiny DAG's files start first, side by side
# (tests/conftest.py queues them first; the tiny run is shared), the rest fill in
TEST_WORKERS ?= 2
test: install lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# seconds: ruff (lint and import order), snakefmt, Snakemake's linter (the demo's config)
lint: install
	$(VENV)/bin/ruff check tibalance workflow tests benchmarks
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(SNAKEMAKE) --configfile config/demo.yaml --lint

# config/README.md from the schema; docs/demo.md's tables (the plan's too) and the
# README's plot from the demo run under results/ (run `make demo` and `make verdict` first), the run named
docs: install
	$(PY) -m tibalance.docs config
	$(PY) -m tibalance.plan --configfile $(PLAN_CONFIG) --results results --out results/tables/plan.md > /dev/null
	$(PY) -m tibalance.docs demo results

clean-demo:
	rm -rf results logs .snakemake
