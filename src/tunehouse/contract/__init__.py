"""The run contract between the server and the trainer: the run spec, the hyperparameters with their
types, defaults and per-model ranges, the event log, the dataset formats and the tiny model's location.

Both the core and the trainer import it; it imports neither, and nothing here loads torch or transformers.
"""
