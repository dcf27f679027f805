"""Data-centric tuning (contrastive fine-tuning of the encoder's dense and sparse representations).

:mod:`hylex.tuning.data` (training groups from BEIR qrels, pair files or a bare corpus; dev split; hard negatives
mined with BM25 or a hylex index's search), :mod:`hylex.tuning.loss` (joint dense + sparse InfoNCE, FLOPS),
:mod:`hylex.tuning.trainer` (LoRA or full fine-tuning through :meth:`hylex.engine.Encoder.features`, checkpoints,
resume), :mod:`hylex.tuning.evaluate` (dev nDCG@10 of every arm and fusion), :mod:`hylex.tuning.output` (the tuned
folder and its card) and :mod:`hylex.tuning.tune` (what ``hylex tune`` runs).
"""
