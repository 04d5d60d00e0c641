# Two commands do all the set-up on a fresh machine:
#   make demo   - install, then run the pipeline on a generated default clip (out/demo/index.html)
#   make test   - install, then run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install install-dev test demo clean gpu-pack

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

# What a GPU lease carries (benchmarks/gpu_session.sh; .gpu/ is ignored): the wheels the GPU image lacks (PyAV for
# its Python 3.12), three shared clips, and the prepared training faces as WebP (needs data/prepared_utk).
SHARED_VIDEO ?= ../shared/data/video
gpu-pack: install-dev
	mkdir -p .gpu/wheels .gpu/av .gpu/clips
	$(BIN)/python -m pip download --quiet --no-deps -d .gpu/wheels facenet-pytorch==2.6.0 filterpy
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 -d .gpu/av av==$$($(BIN)/python -c "import av; print(av.__version__)")
	cp $(SHARED_VIDEO)/arcade_1080p_multiface.mp4 $(SHARED_VIDEO)/cctv_classroom_270p.mp4 \
		$(SHARED_VIDEO)/stage_360p_two_faces.mp4 .gpu/clips/
	test -f .gpu/data/manifest.csv || $(BIN)/python prepare.py --src data/prepared_utk --out .gpu/data --repack 95
	@# identity training (configs/train/paper_id_gpu.yaml) without dlib there: chip geometry and dlib's network
	$(BIN)/python -c "from models.identity import pack_for_identity as p; p('.gpu/data')"

clean:
	rm -rf $(VENV) out *.egg-info
