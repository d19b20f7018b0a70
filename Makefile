# Two entry points for a fresh machine: `make demo` and `make test`. Each creates (or reuses) a local venv.
VENV ?= .venv
PYTHON ?= python3
# The CPU build of torch; a plain `pip install torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.refsr-installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(STAMP)

# The bundled pair: Big Buck Bunny frames 120 (LR, 160x90) and 128 (reference), CC BY 3.0 (see README).
demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/refsr upscale src/refsr/samples/bbb_lr.png --ref src/refsr/samples/bbb_ref.png \
		-o out/demo_sr.png --compare out/demo_compare.png
	@echo "wrote the x4 image (out/demo_sr.png) and bicubic | refsr | reference (out/demo_compare.png)"

# pytest's exit status 5 ("no tests ran") fails the target like any other non-zero status.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) benchmarks/matching.py --quick

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info
