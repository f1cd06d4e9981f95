"""The open-vocabulary testbed (docs/TESTBED.md): the project's own small CLIP trained on the
generated captioned world (``toy_clip``) and the loss table that measures which distillation
losses carry its open vocabulary into a student (``loss_table``)."""
