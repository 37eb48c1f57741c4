# `make test` and `make demo` bootstrap everything on a fresh machine, then run.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.ddpipe-installed
FMNIST  := /usr/share/datasets/fashion-mnist
# torch builds pinned to the ones this project is tested with (they lie on the CI machines' disk).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install data test test-fast wheel-check demo bench-store bench-loader clean

install: $(STAMP) data

# pip's notes about local package folders that this machine does not have are noise: filtered.
PIP_QUIET := 2>&1 | { grep -v '^WARNING: Location' || true; }

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(PY) -m pip install -q --upgrade pip setuptools wheel $(PIP_QUIET)
	set -o pipefail; $(PY) -m pip install -q $(TORCH_PINS) $(PIP_QUIET)
	set -o pipefail; $(PY) -m pip install -q -e '.[torch,dali,fast,dev]' $(PIP_QUIET)
	touch $@

# Fashion-MNIST's IDX files from Debian's package, where apt is available and we are root.
data:
	@if [ -d $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: $(FMNIST) missing and apt-get unavailable; Fashion-MNIST tests will be skipped"; fi

test: install
	$(PY) -m pytest -q -ra --durations=15
	$(MAKE) --no-print-directory wheel-check

# Build the wheel, install it with its extras into a separate venv (never editable) and run the
# digits chain from that install, from an empty folder: a module missing from the wheel fails here.
# The wheel venv borrows torch & co. from the main venv through a path line in a .pth file, so pip
# finds the extras' requirements installed and installs only the wheel. That line adds a plain
# folder to sys.path: the main venv's own .pth files (its editable ddpipe finder among them) are
# never run, so `import ddpipe` can only find the wheel (tests/wheel_check.py asserts it).
WHEEL_VENV ?= .venv-wheel
MAIN_SITE   = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
wheel-check: install
	rm -rf build dist
	set -o pipefail; $(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist . $(PIP_QUIET)
	test -x $(WHEEL_VENV)/bin/python || $(PYTHON) -m venv $(WHEEL_VENV)
	echo "$(MAIN_SITE)" > "$$($(WHEEL_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/ddpipe-main-venv.pth"
	set -o pipefail; $(WHEEL_VENV)/bin/python -m pip install -q --force-reinstall --no-deps dist/ddpipe-*.whl $(PIP_QUIET)
	set -o pipefail; $(WHEEL_VENV)/bin/python -m pip install -q "$$(ls dist/ddpipe-*.whl)[torch,fast,dev]" $(PIP_QUIET)
	cd "$$(mktemp -d)" && $(abspath $(WHEEL_VENV))/bin/python $(CURDIR)/tests/wheel_check.py

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

demo: install
	$(VENV)/bin/ddpipe demo

bench-store: install
	$(VENV)/bin/ddpipe bench store --preset all

bench-loader: install
	$(VENV)/bin/ddpipe bench loader

clean:
	rm -rf $(VENV) $(WHEEL_VENV) build dist demo_out bench/work .pytest_cache .hypothesis

# Wheels for bench/gpu_check.sh on a GPU machine without network (Python 3.12 with CUDA torch,
# torchvision and tensorstore preinstalled): ddpipe itself and the small packages it needs there.
GPU_WHEELS ?= bench/work/gpu-wheels
.PHONY: gpu-wheels
gpu-wheels:
	test -x $(PY) || $(MAKE) --no-print-directory install
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	set -o pipefail; $(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(GPU_WHEELS) . $(PIP_QUIET)
	set -o pipefail; $(PY) -m pip download -q -d $(GPU_WHEELS) --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  "zarr>=3.1,<4" "numcodecs>=0.15" "tqdm>=4.60" "pytest>=8" $(PIP_QUIET)
	@du -sh $(GPU_WHEELS); ls $(GPU_WHEELS)
