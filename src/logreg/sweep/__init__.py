"""Optional extra: ``logreg sweep``, a hyperparameter search on Optuna whose trials are ``logreg fit`` runs."""
