"""Pick one Pareto-optimal trial of a search and write the config ``squeezelstm train`` reads; read a
search's trials back (``load_records``, or as a DataFrame: ``trials_dataframe``)."""

from ._export import export_trial, knee_point, load_records, pick, trial_checkpoint_dir, trials_dataframe

__all__ = ["export_trial", "knee_point", "load_records", "pick", "trial_checkpoint_dir", "trials_dataframe"]
