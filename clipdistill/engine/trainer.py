"""``Trainer(DefaultTrainer)`` for clipdistill: mapper, evaluator, optimizer groups, CPU DDP,
atomic checkpoints and exact resume."""

import logging
import os
import weakref
from collections import OrderedDict

import torch
from tabulate import tabulate
from torch.nn.parallel import DistributedDataParallel

from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase
from detectron2.engine import hooks
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import SemSegDatasetMapper
from ..data.stream import ResumableTrainLoader, build_resumable_loader
from ..evaluation import build_sem_seg_evaluator
from ..modeling.segmenter import OpenVocabSegmenter
from ..utils.rng import get_rng_state, preserve_rng, set_rng_state
from .build import build_model
from .checkpoint import SegmenterCheckpointer
from .prediction_cache import maybe_wrap_prediction_cache
from .results import summarize_results, write_results

__all__ = ["Trainer", "create_ddp_model"]

logger = logging.getLogger(__name__)


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Wrap in ``DistributedDataParallel`` when several processes run.

    Unlike detectron2's version, ``device_ids`` is only passed for CUDA models, so a CPU run with
    ``--num-gpus N`` works (gloo backend, chosen by detectron2's ``launch`` without GPUs).
    """
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)


class Trainer(DefaultTrainer):
    """DefaultTrainer for any clipdistill segmenter (an ``OpenVocabSegmenter``): the semantic
    mapper, ``SemSegEvaluator`` per test dataset (seen/unseen mIoU and hIoU too for datasets with
    a zero-shot split), the model's own lr factors, a logged parameter-group table, strict
    checkpoints and CPU multi-process.

    Exact resume: checkpoints also hold every process's random states and the training stream's
    seed (``clipdistill.data.stream``); ``--resume`` restores them and continues the stream at
    the next step, so on the CPU a resumed run ends with the weights an uninterrupted one has.
    Evaluations during training leave the random states alone.
    """

    def __init__(self, cfg):
        # Same as DefaultTrainer.__init__, but with a DDP wrapper that works on CPU and a strict
        # checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self._train_loader = data_loader
        self._gathered_rng = None
        model = create_ddp_model(
            model, broadcast_buffers=False, find_unused_parameters=model.find_unused_parameters
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SegmenterCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        """``clipdistill.engine.build_model`` (a segmenter teacher too, when the config asks for
        one), logged as ``DefaultTrainer.build_model`` logs it."""
        model = build_model(cfg)
        logger.info(f"Model:\n{model}")
        if not isinstance(model, OpenVocabSegmenter):
            raise TypeError(
                f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} builds a "
                f"{type(model).__name__}, which is not a clipdistill OpenVocabSegmenter"
            )
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        """The resumable training stream of ``DATASETS.TRAIN`` (``build_resumable_loader``)."""
        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        return build_resumable_loader(cfg, dicts, SemSegDatasetMapper(cfg, True))

    # ------------------------------------------------------------------------------ resume
    def resume_or_load(self, resume: bool = True):
        """Resume from the newest readable checkpoint of ``OUTPUT_DIR`` (weights, optimizer,
        scheduler, iteration, random states, data stream) when ``resume``, else load
        ``MODEL.WEIGHTS``; a fresh run into a folder holding an earlier run's checkpoints says
        that it will overwrite them."""
        if not resume and comm.is_main_process() and self.checkpointer.has_checkpoint():
            logger.warning(
                f"{self.cfg.OUTPUT_DIR} holds checkpoints of an earlier run; this run starts from "
                "MODEL.WEIGHTS and overwrites those of the same names (use --resume to continue "
                "that run instead)."
            )
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.resumed_from:
            # the checkpoint holds the iteration that had just finished
            self.start_iter = self.iter + 1
            final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
            if self.start_iter >= self.max_iter and os.path.abspath(
                self.checkpointer.resumed_from
            ) != os.path.abspath(final):
                # killed after the last periodic checkpoint but before (or while) writing
                # model_final.pth: nothing is left to train, so write it now (else a stale
                # model_final.pth of an earlier, shorter run would stand for this one)
                logger.warning(
                    f"Resumed from {self.checkpointer.resumed_from} at the end of training: "
                    f"writing {final} (iteration {self.iter})."
                )
                self.checkpointer.save("model_final", iteration=self.iter)

    def build_hooks(self):
        """detectron2's hooks, and before the checkpointer (which only the main process runs)
        one that collects every process's random states where a checkpoint is saved."""
        ret = super().build_hooks()
        at = next(
            i
            for i, h in enumerate(ret)
            if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))
        )
        ret.insert(at, _GatherRandomStates(self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return ret

    def state_dict(self):
        ret = super().state_dict()
        gathered = self._gathered_rng
        if gathered is not None and gathered[0] == self.iter:
            ret["rng"] = gathered[1]
        else:  # a save outside the schedule: this process's states only
            ret["rng"] = [get_rng_state()]
        if isinstance(self._train_loader, ResumableTrainLoader):
            ret["data_stream"] = self._train_loader.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        rank, world = comm.get_rank(), comm.get_world_size()
        states = state_dict.get("rng")
        if states and len(states) == world:
            set_rng_state(states[rank])
        else:
            logger.warning(
                f"The checkpoint holds the random states of {len(states or [])} processes, this "
                f"run has {world}: they are not restored (the resumed run is not exact)."
            )
        if isinstance(self._train_loader, ResumableTrainLoader):
            self._train_loader.resume_at(self.iter + 1, state_dict.get("data_stream"))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        # Each dict carries its dataset name, so the model scores it against that dataset's
        # vocabulary (several test sets with different classes in one run).
        dicts = [dict(d, dataset_name=dataset_name) for d in DatasetCatalog.get(dataset_name)]
        mapper = SemSegDatasetMapper(cfg, False, dataset_names=[dataset_name])
        return build_detection_test_loader(
            dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str = None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
            if len(cfg.DATASETS.TEST) > 1:
                output_folder = os.path.join(output_folder, dataset_name)
        # "sem_seg" -> SemSegEvaluator; "sem_seg_zero_shot" -> seen / unseen mIoU and hIoU too
        return build_sem_seg_evaluator(dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's test loop over ``DATASETS.TEST`` (each dataset scored with its own
        vocabulary), then one table dataset x mIoU/fwIoU/mACC/pACC (and mIoU-seen/mIoU-unseen/hIoU
        for datasets with a seen/unseen split), printed and written to
        ``OUTPUT_DIR/inference/results.{json,csv}``. The global random states are left as they
        were (an evaluation during training does not change what training draws next)."""
        # TEST.PREDICTION_CACHE: per-image predictions on disk, so an interrupted evaluation
        # resumes where it stopped
        with preserve_rng():
            results = super().test(cfg, maybe_wrap_prediction_cache(cfg, model), evaluators)
        if comm.is_main_process() and results:
            per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
            table = write_results(
                summarize_results(per_dataset), os.path.join(cfg.OUTPUT_DIR, "inference")
            )
            logger.info(f"Evaluation summary ({len(per_dataset)} datasets):\n{table}")
        return results

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """detectron2's schedules, plus ``WarmupPolyLR`` (detectron2's DeepLab project builder,
        which ``clipdistill.config.validate_config`` checks the config against)."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        """Each parameter's lr factor comes from the model (``OpenVocabSegmenter.lr_factor``);
        the parameters named in the model's ``no_weight_decay_names`` get
        ``SOLVER.WEIGHT_DECAY_EMBED``; norms/biases get detectron2's defaults; frozen parameters
        (a teacher, a frozen CLIP) are never included. The groups are logged.
        ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` clips the norm of all gradients together
        (Mask2Former/SAN); other types are detectron2's per-parameter clipping."""
        lr_factor = model.lr_factor
        overrides = {
            name: {"weight_decay": cfg.SOLVER.WEIGHT_DECAY_EMBED}
            for name in model.no_weight_decay_names
        }
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
            overrides=overrides or None,
            lr_factor_func=lr_factor,
        )
        cls._log_param_table(model, lr_factor, cfg)
        name = cfg.SOLVER.OPTIMIZER.upper()
        clip = cfg.SOLVER.CLIP_GRADIENTS
        full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model"
        if name == "SGD":
            opt_cls, kwargs = torch.optim.SGD, dict(
                momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
            )
        elif name == "ADAMW":
            opt_cls, kwargs = torch.optim.AdamW, {}
        else:
            raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: use 'ADAMW' or 'SGD'")
        if full_model:
            opt_cls = _full_model_clipping(opt_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
        opt = opt_cls(params, cfg.SOLVER.BASE_LR, **kwargs)
        return opt if full_model else maybe_add_gradient_clipping(cfg, opt)

    @staticmethod
    def _log_param_table(model, lr_factor, cfg) -> None:
        rows = OrderedDict()
        frozen = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                frozen += p.numel()
                continue
            top = name.split(".")[0]
            row = rows.setdefault(top, [top, 0, 0, cfg.SOLVER.BASE_LR * lr_factor(name)])
            row[1] += 1
            row[2] += p.numel()
        total = sum(r[2] for r in rows.values())
        table = tabulate(
            [r[:2] + [f"{r[2]:,}", f"{r[3]:.3g}"] for r in rows.values()],
            headers=["module", "#tensors", "#params", "lr (weights)"],
        )
        logger.info(
            f"Optimizer parameter groups:\n{table}\ntrainable params: {total:,}; "
            f"frozen (not optimized, e.g. the CLIP teacher): {frozen:,}"
        )


def _full_model_clipping(optimizer_cls, max_norm: float, norm_type: float):
    """``optimizer_cls`` whose ``step`` first clips the norm of all its gradients together."""

    class FullModelGradientClipping(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = f"FullModelGradientClipping{optimizer_cls.__name__}"
    return FullModelGradientClipping


class _GatherRandomStates(HookBase):
    """In every process, at the iterations where ``PeriodicCheckpointer`` saves (every
    ``period``, and the last): collect all processes' random states for the checkpoint (a
    collective; the checkpointer itself runs on the main process only)."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it >= self.trainer.max_iter - 1:
            self.trainer._gathered_rng = (it, comm.all_gather(get_rng_state()))
