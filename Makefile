# clipdistill: `make toy` sets up .venv and runs the embedded default end to end;
# `make test` sets up .venv and runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
TOY_OUT ?= output/voc_toy

.PHONY: setup toy test

setup:
	bash scripts/setup_env.sh
	bash scripts/install_fonts.sh

toy: setup
	$(PY) tools/make_toy_dataset.py
	$(PY) tools/train_net.py --config-file configs/voc_toy.yaml OUTPUT_DIR $(TOY_OUT)
	$(PY) tools/train_net.py --config-file configs/voc_toy.yaml --eval-only \
		MODEL.WEIGHTS $(TOY_OUT)/model_final.pth OUTPUT_DIR $(TOY_OUT)/eval
	$(PY) tools/visualize_json_results.py --input $(TOY_OUT)/eval/inference/sem_seg_predictions.json \
		--output $(TOY_OUT)/viz --dataset voc20_toy_sem_seg_val --limit 8

test: setup
	bash scripts/install_browser.sh
	$(PY) -m pytest -q tests
