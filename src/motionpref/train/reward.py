"""Bradley-Terry reward modelling on the labelled pairs with trl's ``RewardTrainer``.

As the MotionGPT preference paper: the reward model starts from the SFT policy, learns
-log sigma(r(x, y_w) - r(x, y_l) - m(degree)) with the margin by degree from the preference table (3 / 2 / 1 / 0),
and is checked on the 10% held out. After every epoch both splits are scored in full (loss, accuracy, and both
per degree), so the overfitting the paper reports shows as the train and validation curves part; the epoch with
the lowest validation loss is the one kept.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.data_loader import BatchSamplerShard
from datasets import Dataset
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import PrinterCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import RewardConfig, RewardTrainer

from motionpref.config import RewardTrainConfig
from motionpref.distributed import gather_rows, share_to_train
from motionpref.models.reward import RewardModel
from motionpref.progress import interactive
from motionpref.train.losses import bradley_terry_loss
from motionpref.train.preference import DEGREES, PreferencePair

LogMetric = Callable[[str, float, int], None]
# trl's running training statistics forwarded to MLflow every logging step, as reward/step_<name>
STEP_LOGS = ("loss", "accuracy", "margin", "learning_rate", "grad_norm")
# trainer log points per epoch (trl averages its running statistics over each interval)
LOGS_PER_EPOCH = 4


@dataclass(frozen=True)
class _EncodedPairs:
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    margins: list[float]
    degrees: list[str]


def _encode(reward: RewardModel, rows: Sequence[PreferencePair], max_length: int, split: str) -> _EncodedPairs:
    chosen_ids, rejected_ids = [], []
    for row in rows:
        prompt = reward.prompt(row.caption)
        try:
            chosen, rejected = reward.input_ids([prompt, prompt], [row.chosen, row.rejected])
        except ValueError as exc:
            raise ValueError(f"{split} pair {row.pair_id!r}: {exc}") from exc
        longest = max(len(chosen), len(rejected))
        if longest > max_length:
            # trl would silently drop it; a lost pair is a data problem to hear about.
            raise ValueError(
                f"{split} pair {row.pair_id!r}: {longest} tokens (prompt + motion) > reward.train.max_length "
                f"{max_length}; raise reward.train.max_length"
            )
        chosen_ids.append(chosen)
        rejected_ids.append(rejected)
    return _EncodedPairs(chosen_ids, rejected_ids, [r.margin for r in rows], [r.degree for r in rows])


def _dataset(pairs: _EncodedPairs, use_margin: bool) -> Dataset:
    columns: dict[str, Any] = {"chosen_ids": pairs.chosen_ids, "rejected_ids": pairs.rejected_ids}
    if use_margin:
        columns["margin"] = pairs.margins
    return Dataset.from_dict(columns)


def preference_dataset(reward: RewardModel, rows: Sequence[PreferencePair], config: RewardTrainConfig) -> Dataset:
    """trl's pre-tokenized preference format: ``chosen_ids``, ``rejected_ids`` and, with ``use_margin``,
    ``margin`` (which trl subtracts inside the sigmoid)."""
    return _dataset(_encode(reward, rows, config.max_length, "train"), config.use_margin)


def _evaluate_encoded(
    reward: RewardModel, pairs: _EncodedPairs, config: RewardTrainConfig, batch_size: int = 64
) -> dict[str, float]:
    chosen = reward.score_ids(pairs.chosen_ids, batch_size)
    rejected = reward.score_ids(pairs.rejected_ids, batch_size)
    margin = torch.tensor(pairs.margins, dtype=torch.float32) if config.use_margin else None
    loss = bradley_terry_loss(chosen, rejected, margin, config.center_rewards_coefficient)
    correct = (chosen > rejected).float()
    metrics = {
        "loss": loss.mean().item(),
        "accuracy": correct.mean().item(),
        "margin": (chosen - rejected).mean().item(),
    }
    for degree in DEGREES:
        mask = torch.tensor([d == degree for d in pairs.degrees])
        if mask.any():
            metrics[f"loss_{degree}"] = loss[mask].mean().item()
            metrics[f"accuracy_{degree}"] = correct[mask].mean().item()
    return metrics


def evaluate_reward(
    reward: RewardModel, rows: Sequence[PreferencePair], config: RewardTrainConfig, batch_size: int = 64
) -> dict[str, float]:
    """``loss`` (the training objective, ``bradley_terry_loss`` averaged), ``accuracy`` (r_w > r_l; ties count
    as wrong, as in trl), mean reward ``margin`` r_w - r_l, and ``loss_<degree>``/``accuracy_<degree>`` for each
    degree present in ``rows``."""
    if not rows:
        raise ValueError("evaluate_reward: no preference pairs")
    return _evaluate_encoded(reward, _encode(reward, rows, config.max_length, "evaluated"), config, batch_size)


def reward_config(config: RewardTrainConfig, seed: int, output_dir: str | Path, steps_per_epoch: int) -> RewardConfig:
    """trl's arguments for our config: CPU unless a GPU is there, fp32, no checkpoints, no trainer evaluation
    (``train_reward`` scores both splits itself), no integrations (we log to MLflow through ``log_metric``)."""
    return RewardConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        lr_scheduler_type="linear",
        center_rewards_coefficient=config.center_rewards_coefficient,
        max_length=None,  # checked in _encode: trl would drop a longer pair without a word
        disable_dropout=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # transformers 5's name for gradient_checkpointing (trl defaults it on)
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // LOGS_PER_EPOCH),
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every parameter trains: no extra pass over the graph each step
        disable_tqdm=not interactive(),
    )


class _ShardedRewardTrainer(RewardTrainer):
    """trl's ``RewardTrainer`` with each global batch split across the launched processes the way the other sharded
    trainers split theirs: every process reads every loader batch whole (its order comes from ``data_seed``, the
    same whatever the process count) and trains on its share of the pairs (``share_to_train``), the loss weighted
    by ``share_weight`` so that DDP's mean gradient is the whole batch's. accelerate's own sharding of the loader
    would instead make each process's batch a whole ``batch_size`` (the global batch growing with the process
    count) and pad the last one with repeated pairs."""

    def get_train_dataloader(self) -> DataLoader:
        loader = super().get_train_dataloader()
        shard = getattr(loader, "batch_sampler", None)
        if isinstance(shard, BatchSamplerShard):  # only under several processes
            # a passthrough, as Trainer makes it for its own rank-aware BatchRebalanceSampler; uneven, so that the
            # last batch comes short, as in one process, rather than padded with the first pairs
            shard.num_processes, shard.process_index, shard.even_batches = 1, 0, False
        return loader

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The Bradley-Terry loss trl optimises (``bradley_terry_loss``: without reward centring, in trl's very
        operations) over this process's share of the batch's pairs; the logged accuracy and margin are the whole
        batch's."""
        accel = self.accelerator
        pairs = len(inputs["input_ids"]) // 2  # the chosen rows, then the rejected ones
        rows, counted, weight = share_to_train(range(pairs), accel)
        if len(rows) < pairs:
            both = torch.tensor([*rows, *(pairs + r for r in rows)], device=inputs["input_ids"].device)
            inputs = {k: v[both[: len(rows)]] if k == "margin" else v[both] for k, v in inputs.items()}
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        pair_losses = bradley_terry_loss(
            rewards_chosen, rewards_rejected, inputs.get("margin"), self.args.center_rewards_coefficient
        )
        loss = pair_losses.mean() * weight
        with torch.no_grad():
            metrics = self._metrics["train" if self.model.training else "eval"]
            correct = gather_rows((rewards_chosen > rewards_rejected).float(), counted, accel)
            metrics["accuracy"].append(correct.mean().item())
            metrics["margin"].append(gather_rows(rewards_chosen - rewards_rejected, counted, accel).mean().item())
        return (loss, outputs) if return_outputs else loss


class _EpochEnd(TrainerCallback):
    """Scores both splits after every epoch, logs them, and keeps the weights of the lowest validation loss."""

    def __init__(
        self,
        reward: RewardModel,
        train: _EncodedPairs,
        val: _EncodedPairs,
        config: RewardTrainConfig,
        log_metric: LogMetric | None,
    ) -> None:
        self.reward, self.train, self.val, self.config, self.log_metric = reward, train, val, config, log_metric
        self.epoch = 0
        self.last_train: dict[str, float] = {}
        self.best_val: dict[str, float] = {}
        self.best_epoch = 0
        self.best_state: dict[str, Tensor] = {}

    def _log(self, name: str, value: float, step: int) -> None:
        if self.log_metric is not None:
            self.log_metric(f"reward/{name}", value, step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        for key in STEP_LOGS:
            if logs and key in logs:
                self._log(f"step_{key}", float(logs[key]), state.global_step)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.epoch += 1
        self.last_train = _evaluate_encoded(self.reward, self.train, self.config)
        val = _evaluate_encoded(self.reward, self.val, self.config)
        for prefix, metrics in (("train", self.last_train), ("val", val)):
            for key, value in metrics.items():
                self._log(f"{prefix}_{key}", value, state.global_step)
        self._log("epoch", float(self.epoch), state.global_step)
        if not self.best_val or val["loss"] < self.best_val["loss"]:
            self.best_val, self.best_epoch = val, self.epoch
            # Kept on CPU rather than saved each time: one write at the end, however often val improves.
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.reward.model.state_dict().items()}


def train_reward(
    reward: RewardModel,
    train_rows: Sequence[PreferencePair],
    val_rows: Sequence[PreferencePair],
    config: RewardTrainConfig,
    seed: int,
    out_dir: str | Path,
    log_metric: LogMetric | None = None,
) -> dict[str, float]:
    """Train ``reward`` in place with trl's ``RewardTrainer``; save the best-validation-loss epoch to ``out_dir``
    (``RewardModel.load`` reads it) and leave ``reward`` holding those weights, in eval mode.

    Under ``accelerate launch`` each process trains on its share of every global batch of ``config.batch_size``
    pairs (``_ShardedRewardTrainer``); the per-epoch scoring of both splits runs whole in every process on the bare
    model, and only the main process saves.

    Returns ``best_epoch`` (1-based), ``val_loss``, ``val_accuracy``, ``val_margin`` and the per-degree
    ``val_loss_<degree>``/``val_accuracy_<degree>`` of that epoch, ``train_loss``/``train_accuracy`` (and per
    degree) after the last epoch, ``epochs``, ``steps``, ``train_pairs`` and ``val_pairs``.
    """
    if not train_rows:
        raise ValueError("train_reward: no training pairs")
    if not val_rows:
        raise ValueError("train_reward: no validation pairs (the best epoch is chosen on them)")
    train_pairs = _encode(reward, train_rows, config.max_length, "train")
    val_pairs = _encode(reward, val_rows, config.max_length, "val")
    dataset = _dataset(train_pairs, config.use_margin)
    callback = _EpochEnd(reward, train_pairs, val_pairs, config, log_metric)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    with tempfile.TemporaryDirectory(prefix="motionpref-reward-") as scratch:
        trainer = _ShardedRewardTrainer(
            model=reward.model,
            args=reward_config(config, seed, scratch, steps_per_epoch),
            train_dataset=dataset,
            processing_class=reward.tokenizer,
            callbacks=[callback],
        )
        # Its per-step dict prints would flood the stage's log; the same numbers go to MLflow as reward/step_*.
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        is_main = trainer.accelerator.is_main_process
    reward.model.load_state_dict(callback.best_state)
    reward.model.eval()
    if is_main:
        reward.save(out_dir)
    return {
        **{f"val_{k}": v for k, v in callback.best_val.items()},
        **{f"train_{k}": v for k, v in callback.last_train.items()},
        "best_epoch": float(callback.best_epoch),
        "epochs": float(callback.epoch),
        "steps": float(trainer.state.global_step),
        "train_pairs": float(len(train_rows)),
        "val_pairs": float(len(val_rows)),
    }
