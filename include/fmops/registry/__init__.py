"""MLflow: the run records of a pipeline run, the registered model version, review and aliases.

One experiment per pipeline. A parent run per DAG run holds the config, data digests, validation
summary and leaderboard; a nested child run per candidate (and the baseline) holds its
hyperparameters, training curves, evaluation metrics and job log. The winner is logged as an
MLflow pyfunc model and registered with the alias ``challenger``; its description is the model
card and its tags carry the lineage. A reviewer approves or rejects the version; fmops_deploy
waits for that, and after a good rollout ``champion`` moves to it.

Modules (import them by name; this package re-exports nothing):

- ``tracking``: where MLflow is (tracking/registry URI, UI addresses of runs and versions), its
  clients, the aliases ``challenger`` / ``champion`` and version tags;
- ``runs``: the experiment, the DAG run's parent run and each model's child run, with their
  params, metrics (``flat_metrics``), training curves and artifacts; the run's bill;
- ``card``: the model card (the version's description) and the gate summary tag;
- ``registration``: registering the winner as a version (idempotent across retries) and
  downloading a version's model;
- ``review``: the review tags, ``set_review``, what fmops_deploy records on a version,
  ``promote`` and the champion's artifacts.
"""
