# Two commands on a fresh machine: `make run` and `make test`. Every target sets up first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SETUP_STAMP := $(VENV)/.setup-complete
DOCS_PORT ?= 8080
PREFECT_PORT ?= 4200

export ELT_DATA_DIR ?= $(CURDIR)/data
export ELT_TARGET ?= duckdb
# Run mode: sample (bundled inputs, offline) or live (.dlt/config.toml). Unset: the mode the data
# dir remembers, else sample. `make run ELT_MODE=live`.
export ELT_MODE ?=
export DBT_PROJECT_DIR := $(CURDIR)/dbt_project
export DBT_PROFILES_DIR := $(CURDIR)/profiles
# No telemetry from any tool (DESIGN §5).
export DO_NOT_TRACK := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := False
export RUNTIME__DLTHUB_TELEMETRY := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Prefect's local state (its SQLite API database) beside the data, not in ~/.prefect.
export PREFECT_HOME ?= $(ELT_DATA_DIR)/.prefect
# The temporary Prefect API of `make run` may take longer than Prefect's 20 s to start on a busy machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

DBT := $(BIN)/dbt
# Targets that write create the data dir first; mkdir says in one line why when it cannot.
MAKE_DATA_DIR = @mkdir -p "$(ELT_DATA_DIR)" && mkdir -p "$(PREFECT_HOME)"

.PHONY: help setup load build report docs query serve run test bench lint clean reset deploy work-pool promote slim-ci

help:
	@echo "make run    set up, load the bundled sample data and build the dbt models (offline; ELT_MODE=live: real sources)"
	@echo "make test   set up and run the test suite"
	@echo "make load | build | report | docs | query | serve | bench | lint | clean | reset"
	@echo "make promote   staging's published marts, reports and manifest to prod (README: Environments)"
	@echo "make slim-ci   dev builds only the models changed against prod's manifest and their children, reading the rest from prod"
	@echo "make image | push | test-image   the container image (deploy/Containerfile), IMAGE_REGISTRY for push"
	@echo "make deploy | work-pool   the scheduled deployments in a work pool (PREFECT_API_URL, ELT_WORK_POOL, ELT_IMAGE)"

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Python 3.11 is required (make PYTHON=/path/to/python3.11 ...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

load: setup
	$(BIN)/python -m loaders football-csv
	$(BIN)/python -m loaders football-api
	$(BIN)/python -m loaders vehicles discover
	$(BIN)/python -m spark_jobs.vehicle_lake
	$(BIN)/python -m loaders vehicles load

# dbt build of what the loaded sources feed (never-loaded sources are skipped and named), in one
# process that holds the DuckDB warehouse: waits for another writer or reader (ELT_LOCK_TIMEOUT s).
build: setup
	$(MAKE_DATA_DIR)
	$(BIN)/python -m orchestration.build

query: setup
	$(BIN)/python -m loaders.query

report: setup
	$(BIN)/python -m orchestration.report

docs: setup
	$(MAKE_DATA_DIR)
	$(DBT) docs generate
	$(DBT) docs serve --host 127.0.0.1 --port $(DOCS_PORT) --no-browser

serve: setup
	$(BIN)/python -m orchestration.serve --with-server --port $(PREFECT_PORT)

# prefect.yaml's deployments in the work pool ELT_WORK_POOL of the Prefect server at PREFECT_API_URL:
# `elt` (a process pool on a machine with this checkout) or `elt-k8s` (Kubernetes Jobs running ELT_IMAGE).
# Each ELT_ENV but dev has its own pools, `elt-<env>` and `elt-k8s-<env>` (tests/test_environments.py).
ENV_POOL_SUFFIX = $(if $(filter-out dev,$(ELT_ENV)),-$(ELT_ENV))
ELT_WORK_POOL ?= elt$(ENV_POOL_SUFFIX)
K8S_WORK_POOL ?= elt-k8s$(ENV_POOL_SUFFIX)
# The image the Kubernetes pool's Jobs run, as a registry can serve it (CI: build/pushed-image).
ELT_IMAGE ?=
K8S_JOB_TEMPLATE := deploy/k8s/base-job-template.json
# Without an API URL, Prefect would deploy to a throwaway local server.
REQUIRE_PREFECT_API = $(BIN)/python -c "import sys; from prefect.settings import PREFECT_API_URL as u; \
	sys.exit(None if u.value() else 'make ' + sys.argv[1] + ': set PREFECT_API_URL to the Prefect server')"

deploy: setup
	@$(REQUIRE_PREFECT_API) deploy
	@[ "$(ELT_WORK_POOL)" != "$(K8S_WORK_POOL)" ] || [ -n "$(ELT_IMAGE)" ] || { echo "make deploy: the $(K8S_WORK_POOL) pool runs an image: set ELT_IMAGE" >&2; exit 1; }
	ELT_WORK_POOL=$(ELT_WORK_POOL) ELT_IMAGE=$(ELT_IMAGE) ELT_ENV=$(or $(ELT_ENV),dev) $(BIN)/prefect --no-prompt deploy --all

# Creates or updates the Kubernetes work pool from the committed base job template.
work-pool: setup
	@$(REQUIRE_PREFECT_API) work-pool
	$(BIN)/prefect work-pool create $(K8S_WORK_POOL) --type kubernetes --base-job-template $(K8S_JOB_TEMPLATE) --overwrite

# Prefect's local API database is created (migrated) once, not on the first run's clock (~10 s).
PREFECT_DB := $(PREFECT_HOME)/prefect.db
$(PREFECT_DB): $(SETUP_STAMP)
	$(MAKE_DATA_DIR)
	$(BIN)/prefect server database upgrade -y >/dev/null
	@touch $@

# VERBOSE=1 also shows every task run's lines on screen; they are always in Prefect's logs.
run: setup $(PREFECT_DB)
	$(BIN)/python -m orchestration.flows $(if $(VERBOSE),--verbose)

# Three workers on CI's 2 cores: the suite often waits on Spark, dbt and Prefect subprocesses
# (clean-clone CI on the same slow day: 25m52s of pytest with three, 28m50s with two; README).
# A file's tests stay on one worker, so module-scoped databases are made once.
# --no-loadscope-reorder: files are handed out in collection order (tests/conftest.py puts the
# longest first); by default pytest-xdist hands out the files with the most tests first, which
# left the long files with few tests (test_flows, test_make_run) running alone at the end.
TEST_WORKERS ?= 3
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Measured figures, not assertions (bench/run.py); BENCH_ARGS="--events 200000" for a quick one.
bench: setup
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# ruff on the Python; sqlfluff with the dbt templater (.sqlfluff) on the SQL, rendered against an
# empty throwaway warehouse (never the data dir's). tests/test_lint.py runs the same.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	ELT_DATA_DIR="$$scratch" DBT_LOG_PATH="$$scratch/dbt_logs" \
	$(BIN)/sqlfluff lint dbt_project

clean:
	rm -rf $(DBT_PROJECT_DIR)/target $(DBT_PROJECT_DIR)/logs .pytest_cache

# Forget every run of ELT_ENV: warehouse, lake, landing, file states, dlt and Prefect state (keeps
# data/sample). dev's reset keeps the staging/ and prod/ folders; staging's or prod's empties only its own.
ENV_DATA_DIR = $(ELT_DATA_DIR)$(if $(filter-out dev,$(ELT_ENV)),/$(ELT_ENV))
reset:
	[ ! -d "$(ENV_DATA_DIR)" ] || find "$(ENV_DATA_DIR)" -mindepth 1 -maxdepth 1 ! -name sample ! -name staging ! -name prod -exec rm -rf {} +

promote: setup
	$(BIN)/python -m orchestration.promote

# dbt build in dev of state:modified+ against prod's manifest; unchanged models are read from prod.
slim-ci: setup
	$(MAKE_DATA_DIR)
	$(BIN)/python -m orchestration.slim_ci

# ---- Container image (deploy/Containerfile; README, "Container image") ----
# Built from the committed HEAD only (git archive), with buildah from Debian's packages in its own
# storage (--isolation chroot: this machine's cgroups defeat the OCI runtimes).
IMAGE_NAME ?= localhost/elt-thin-loaders
IMAGE_TAG ?= $(shell git rev-parse --short HEAD)
IMAGE ?= $(IMAGE_NAME):$(IMAGE_TAG)
# Unset: a bookworm python3.11 root filesystem made by mmdebstrap (no registry needed);
# else a pullable base, e.g. BASE=docker.io/library/python:3.11-slim-bookworm.
BASE ?=
DEBIAN_BASE := localhost/elt-base:bookworm-python3.11
IMAGE_STORE ?= /var/tmp/elt-image-store
BUILDAH := buildah --root $(IMAGE_STORE)/root --runroot $(IMAGE_STORE)/run --storage-driver overlay
IMAGE_REGISTRY ?=
IMAGE_TLS_VERIFY ?= true
WHEELHOUSE := build/wheelhouse
IMAGE_CONTEXT := build/context
IMAGE_DIGEST := build/image.digest
# The pushed image by digest (registry/name@sha256:...): what `make deploy ELT_IMAGE=...` pins.
PUSHED_IMAGE := build/pushed-image

.PHONY: wheelhouse image push image-tools test-image

# A Debian package, installed only when its command is missing.
debian_command = command -v $(1) >/dev/null || \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; }

image-tools:
	@$(call debian_command,buildah)
	@$(call debian_command,mmdebstrap)
	@$(call debian_command,skopeo)

# Wheels of the runtime dependencies ([project] dependencies under constraints.txt), built on the
# host with network (pyspark is an sdist), so the image build needs none; plus those that another
# Python 3.11 patch release needs (deploy/image/marker_wheels.py: bookworm's is 3.11.2).
wheelhouse: $(WHEELHOUSE)/requirements.txt

$(WHEELHOUSE)/requirements.txt: pyproject.toml constraints.txt deploy/image/marker_wheels.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Python 3.11 is required" >&2; exit 1; }
	rm -rf $(WHEELHOUSE) build/pip && mkdir -p $(WHEELHOUSE)
	$(PYTHON) -m venv build/pip
	build/pip/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > $(WHEELHOUSE)/requirements.in
	build/pip/bin/python -m pip wheel --quiet -c constraints.txt -r $(WHEELHOUSE)/requirements.in -w $(WHEELHOUSE)
	build/pip/bin/python -m pip install --quiet packaging
	for round in 1 2 3 4; do \
	  missing=$$(build/pip/bin/python deploy/image/marker_wheels.py $(WHEELHOUSE)) || exit 1; \
	  [ -n "$$missing" ] || break; \
	  [ $$round -lt 4 ] || { echo "error: wheels still missing after 3 rounds: $$missing" >&2; exit 1; }; \
	  build/pip/bin/python -m pip wheel --quiet -c constraints.txt -w $(WHEELHOUSE) $$missing; \
	done
	mv $(WHEELHOUSE)/requirements.in $@

image: image-tools wheelhouse
	@git diff --quiet HEAD || echo "note: the image is built from HEAD; uncommitted changes are not in it" >&2
	rm -rf $(IMAGE_CONTEXT) && mkdir -p $(IMAGE_CONTEXT)
	git archive HEAD | tar -x -C $(IMAGE_CONTEXT)
	cp -al $(WHEELHOUSE) $(IMAGE_CONTEXT)/wheelhouse
	$(if $(BASE),,$(BUILDAH) inspect --type image $(DEBIAN_BASE) >/dev/null 2>&1 || \
	  BUILDAH="$(BUILDAH)" deploy/image/base.sh $(DEBIAN_BASE))
	$(BUILDAH) bud --isolation chroot --layers --build-arg BASE=$(or $(BASE),$(DEBIAN_BASE)) \
	  -f $(IMAGE_CONTEXT)/deploy/Containerfile -t $(IMAGE) $(IMAGE_CONTEXT)

# To $(IMAGE_REGISTRY) (host[:port][/path]; credentials: buildah login or REGISTRY_AUTH_FILE);
# the pushed manifest's digest goes to build/image.digest, the reference by digest to build/pushed-image.
push: image-tools
	@test -n "$(IMAGE_REGISTRY)" || { echo "error: set IMAGE_REGISTRY (make push IMAGE_REGISTRY=host:port)" >&2; exit 1; }
	$(BUILDAH) push --tls-verify=$(IMAGE_TLS_VERIFY) --digestfile $(IMAGE_DIGEST) \
	  $(IMAGE) docker://$(IMAGE_REGISTRY)/$(notdir $(IMAGE_NAME)):$(IMAGE_TAG)
	@echo "$(IMAGE_REGISTRY)/$(notdir $(IMAGE_NAME))@$$(cat $(IMAGE_DIGEST))" > $(PUSHED_IMAGE)
	@echo "pushed $$(cat $(PUSHED_IMAGE))"

# From a clean clone of HEAD: make image, a run of the sample in the image, make push and a pull
# by digest (tests/test_image.py); not in `make test`.
test-image: setup image-tools
	@$(call debian_command,docker-registry)
	$(BIN)/python -m pytest -m image
