# fieldseg: two set-up commands. `make demo` runs the main job on generated data,
# `make test` runs ruff and the test suite. Both create or refresh .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FIELDSEG := $(VENV)/bin/fieldseg
DEMO_DIR ?= demo-output
DEMO_SEED ?= 7
DEMO_TEST_SEED ?= 8
DEMO_EPOCHS ?= 75
DEMO_MINUTES ?= 30
DEMO_CONFIG ?= configs/unet_boundary_r18_cpu.yaml
PYTEST_ARGS ?=

.PHONY: venv test test-fast lint demo bench clean

venv: $(VENV)/.installed

# Reinstall whenever pyproject.toml changes; `pip install -e` keeps the package live.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check fieldseg tests benchmarks examples
	$(VENV)/bin/ruff format --check fieldseg tests benchmarks examples

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The whole loop on generated data: a training scene and a separate test scene at synth's
# default difficulty (seeds pinned), tile, train DEMO_EPOCHS epochs (a fixed amount of work, so
# the figures do not depend on how busy the machine is; DEMO_MINUTES caps the time), predict
# the test scene, evaluate it against its truth, print the figures.
demo: venv
	rm -rf $(DEMO_DIR)
	mkdir -p $(DEMO_DIR)
	$(FIELDSEG) synth -o $(DEMO_DIR)/train_scene.tif --fields $(DEMO_DIR)/train_fields.gpkg \
		--size 1024 --seed $(DEMO_SEED)
	$(FIELDSEG) synth -o $(DEMO_DIR)/test_scene.tif --fields $(DEMO_DIR)/test_fields.gpkg \
		--size 1024 --seed $(DEMO_TEST_SEED)
	$(FIELDSEG) tile $(DEMO_DIR)/train_scene.tif --labels $(DEMO_DIR)/train_fields.gpkg \
		-o $(DEMO_DIR)/dataset --chip-size 128 --overlap 32 --seed $(DEMO_SEED)
	$(FIELDSEG) train $(DEMO_DIR)/dataset -c $(DEMO_CONFIG) -o $(DEMO_DIR)/run \
		--epochs $(DEMO_EPOCHS) --max-minutes $(DEMO_MINUTES) --set training.seed=$(DEMO_SEED)
	cp $(DEMO_DIR)/run/training_curves.png $(DEMO_DIR)/training_curves.png
	$(FIELDSEG) predict $(DEMO_DIR)/test_scene.tif -m $(DEMO_DIR)/run \
		-o $(DEMO_DIR)/fields.gpkg --chip-size 256 --overlap 64
	$(FIELDSEG) evaluate $(DEMO_DIR)/fields.gpkg $(DEMO_DIR)/test_fields.gpkg \
		-o $(DEMO_DIR)/report.json --plot $(DEMO_DIR)/errors.png --errors $(DEMO_DIR)/errors.gpkg
	@echo "demo: model $(DEMO_CONFIG) (the family with the best F1 per CPU minute in benchmarks/models.py)"
	@echo "demo: predicted fields $(DEMO_DIR)/fields.gpkg, report $(DEMO_DIR)/report.json, map $(DEMO_DIR)/errors.png, training curves $(DEMO_DIR)/training_curves.png"

bench: venv
	$(PY) benchmarks/tile.py
	$(PY) benchmarks/evaluate.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
