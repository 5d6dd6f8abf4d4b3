"""The sweep's summary of its trials."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from rotmnist.errors import PipelineError
from rotmnist.tracking import tune


def test_summary_falls_back_to_the_best_pruned_trial_when_none_completed():
    study = optuna.create_study(direction="maximize")
    for value in (0.3, 0.6):
        trial = study.ask({"family": optuna.distributions.CategoricalDistribution(["logreg"])})
        for name, v in (("lr", 0.01), ("weight_decay", 0.0), ("batch_size", 64)):
            trial.suggest_categorical(name, [v])
        trial.report(value / 2, 1)
        trial.report(value, 2)
        study.tell(trial, state=TrialState.PRUNED)
    result = tune._summarise(study, "parent")
    assert result.value == 0.6 and result.best_trial == 1 and result.spec == {"family": "logreg"}
    assert result.counts == {"complete": 0, "pruned": 2, "failed": 0}
    with pytest.raises(PipelineError, match="no trial completed"):
        tune._summarise(optuna.create_study(direction="maximize"), "parent")
