# RelayPACS — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export UV_LINK_MODE ?= copy

.PHONY: compose-test agent-bundle test-py312 demo test test-fast lint docs install system-deps services npm-deps pwa pwa-test bench-ingest bench-wan bench-forward bench-reports bench-load clean

install:  ## Python environment for all workspace packages (installs uv if missing)
	@bash scripts/ensure-uv.sh
	$(UV) sync --all-packages --frozen

system-deps:  ## Debian packages the integration tests use as real peers
	@bash scripts/install-system-deps.sh

npm-deps:  ## third-party tus client (tus-js-client) the interoperability tests run under Node
	@bash scripts/ensure-node.sh
	cd tests/interop && npm ci --no-audit --no-fund --loglevel=error

pwa:  ## build the PWA (upload app served by the agent, dashboard served by the hub) into pwa/dist, when its sources changed
	@bash scripts/build-pwa.sh

pwa-test: install pwa  ## the PWA's unit tests (Vitest): DICOM headers in the browser, the upload queue
	cd pwa && npm test

services:  ## PostgreSQL and Redis for the integration tests: installed and started when missing
	@bash scripts/ensure-services.sh

demo: install pwa  ## hub + agent on embedded defaults, in the foreground (Ctrl-C stops both)
	@bash scripts/demo.sh

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy
	$(UV) run lint-imports

test: system-deps install npm-deps services lint pwa-test  ## everything: lint, Vitest, unit and integration tests (browser ones included)
	$(UV) run pytest -q

docs: install npm-deps  ## regenerate docs/configuration.md, docs/cli.md, docs/api.md, docs/agent-lan-api.json and the PWA's wire types (dashboard and upload app) from the code
	$(UV) run python scripts/gendocs.py

test-fast: install  ## unit tests only (no PostgreSQL, Orthanc or spawned servers)
	$(UV) run pytest -q -m "not integration"

test-py312: install  ## the unit tests again under CPython 3.12 (the hub image's Python), in .venv-py312
	bash scripts/test-py312.sh

bench-ingest: install  ## folder and C-STORE ingest rates, peak RSS (prints a table)
	$(UV) run python bench/ingest/run.py

bench-wan: install system-deps  ## RelayPACS vs plain STOW-RS over shaped links (root: netns)
	$(UV) run python bench/wan/run.py

bench-forward: install system-deps  ## hub -> Orthanc forwarding rate vs direct STOW-RS
	$(UV) run python bench/forward/run.py

bench-load: install system-deps  ## 200 simulated agents, 10 min, 2 hub replicas behind nginx (one killed), archive checked; then ingest by replica count
	$(UV) run python bench/load/run.py --kill --think 180 --workers 2
	$(UV) run python bench/load/run.py --curve 1,2,3 --minutes 3 --think 5 --workers 0 --out bench/load/curve.json

bench-reports: install system-deps  ## final SR in Orthanc -> readable at the agent, vs a plain poll
	$(UV) run python bench/reports/run.py

clean:
	rm -rf var/demo .pytest_cache .mypy_cache .ruff_cache artifacts pwa/dist

agent-bundle: install pwa  ## offline agent installers for Debian / Raspberry Pi OS: dist/relaypacs-agent-*-bookworm-{amd64,arm64}.tar.gz
	bash installers/build-bundle.sh amd64 arm64

compose-test: install  ## docker-compose.yml for real: own dockerd, offline images, enroll, send, restart, down (root; prints phase times)
	$(UV) run python deploy/compose/compose_test.py
