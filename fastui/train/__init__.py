"""The three-network distillation engine (teacher, fake score + discriminator, generator) on DeepSpeed or torch.

Modules, one responsibility each: ``config`` (typed TOML config, overrides, validation), ``schedule`` (noise levels,
warm-up, EMA decay), ``models`` (building the networks), ``engines`` (DeepSpeed / torch wrappers), ``step`` (one
iteration, no host syncs), ``ema``, ``checkpoint`` (atomic, exact resume), ``logging`` (CSV, TensorBoard, tqdm),
``run`` (the loop) and ``__main__`` (the command line). See /work/shared/docs/DESIGN.md, "Training engine".
"""
