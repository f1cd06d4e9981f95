# clipdistill: `make toy` sets up .venv and runs the embedded default end to end;
# `make compare` runs the testbed comparison; `make test` sets up .venv and runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
TOY_OUT ?= output/voc_toy
COMPARE_OUT ?= output/compare_testbed

.PHONY: setup toy compare test

setup:
	bash scripts/setup_env.sh
	bash scripts/install_fonts.sh

# The open-vocabulary testbed (docs/TESTBED.md): generate the captioned world, then one table of
# seen / unseen mIoU and hIoU for the shipped teacher itself, the distilled student and a
# loss_ce-only control (two students at once, one core each); re-evaluate the student's
# checkpoint with the user's --eval-only command and render its predictions.
toy: setup
	$(PY) tools/make_toy_dataset.py
	$(PY) tools/loss_table.py --config-file configs/voc_toy.yaml --variants config ce annotation-free --seeds 0 \
		--jobs 2 --output $(TOY_OUT)
	$(PY) tools/train_net.py --config-file configs/voc_toy.yaml --eval-only \
		MODEL.WEIGHTS $(TOY_OUT)/config/seed0/model_final.pth OUTPUT_DIR $(TOY_OUT)/eval
	$(PY) tools/visualize_json_results.py --input $(TOY_OUT)/eval/inference/sem_seg_predictions.json \
		--output $(TOY_OUT)/viz --dataset testbed_sem_seg_val --limit 8

# Every segmenter on the testbed (docs/COMPARISON.md, "The testbed"): trains SAN, OVSeg and the
# students on the seen classes (3 seeds each, resumable: a re-run continues), evaluates every row
# (seen / unseen mIoU, hIoU), measures each at 64x64 and 512x512, writes the table and plot.
compare: setup
	$(PY) tools/make_toy_dataset.py
	$(PY) tools/compare.py --entries-file configs/compare/testbed.txt --output-dir $(COMPARE_OUT) \
		--size 64 512 --no-test-resize-at 512 --seeds 0 1 2 --device cpu

test: setup
	bash scripts/install_browser.sh
	$(PY) -m pytest -q tests
