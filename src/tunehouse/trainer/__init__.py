"""The training process: ``python -m tunehouse.trainer SPEC_JSON_PATH``.

Only the trainer process imports this package; what it shares with the server (the spec, the event log's
types, the dataset formats) lives in ``tunehouse.contract``.
"""
