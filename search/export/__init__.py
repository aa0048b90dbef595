"""Pick one Pareto-optimal trial of a search and write the config ``squeezelstm train`` reads."""

from ._export import export_trial, knee_point, load_records, pick, trial_checkpoint_dir

__all__ = ["export_trial", "knee_point", "load_records", "pick", "trial_checkpoint_dir"]
