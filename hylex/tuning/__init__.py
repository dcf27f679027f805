"""Data-centric tuning (contrastive fine-tuning of the encoder's dense and sparse representations).

Built so far: :mod:`hylex.tuning.data` (training groups from BEIR qrels, pair files or a bare corpus; dev split;
BM25-mined hard negatives) and :mod:`hylex.tuning.loss` (joint dense + sparse InfoNCE, FLOPS). The trainer and
``hylex tune`` are not built yet (issue 13); training differentiates :meth:`hylex.engine.Encoder.features`.
"""
