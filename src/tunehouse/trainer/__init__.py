"""The training process: ``python -m tunehouse.trainer SPEC_JSON_PATH``.

Kept free of imports on purpose: the API server imports ``tunehouse.trainer.data``,
``.spec`` and ``.events`` and must not pay for (or depend on) torch/transformers.
"""
