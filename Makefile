# Two commands do all the set-up on a fresh machine:
#   make demo   - install, then run the pipeline on a generated default clip (out/demo/index.html)
#   make test   - install, then run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install install-dev test demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is installed only when it is missing, so a user who installed their own CUDA build keeps it.
install: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e .
	@# facenet-pytorch ships the MTCNN weights; its wheel pins old torch/numpy, so no dependencies.
	@$(BIN)/python -m pip show --quiet facenet-pytorch 2>/dev/null || $(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0

install-dev: install
	$(BIN)/python -m pip install --quiet -e ".[dev,recognition,cluster]"

test: install-dev
	$(BIN)/python -m pytest -q

# The demo clip is generated from skimage.data.astronaut() (scikit-image ships the image).
demo: install-dev
	$(BIN)/python run_stream.py --source demo --out out/demo --overwrite

clean:
	rm -rf $(VENV) out *.egg-info
