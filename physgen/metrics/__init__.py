"""Physics-aware metrics: pure functions on arrays/tensors, each with an uncertainty.

>>> import numpy as np
>>> from physgen.metrics import wasserstein1
>>> round(wasserstein1(np.zeros(100), np.ones(100), n_bootstrap=0).value, 6)
1.0
"""

from physgen.metrics.blocking import blocking
from physgen.metrics.calochallenge import calochallenge_evaluate
from physgen.metrics.calorimeter import high_level_features, layer_profiles, voxel_spectrum
from physgen.metrics.classifier import classifier_two_sample, roc_auc
from physgen.metrics.distances import (
    MetricResult,
    fpd,
    frechet_distance,
    kpd,
    median_bandwidth,
    mmd2,
    sliced_wasserstein,
    wasserstein1,
)
from physgen.metrics.evaluate import evaluate, features
from physgen.metrics.events import event_features, invariant_mass
from physgen.metrics.histograms import chi2_two_sample, separation_power, shared_bins

__all__ = [
    "MetricResult",
    "blocking",
    "calochallenge_evaluate",
    "mmd2",
    "median_bandwidth",
    "kpd",
    "fpd",
    "frechet_distance",
    "wasserstein1",
    "sliced_wasserstein",
    "separation_power",
    "chi2_two_sample",
    "shared_bins",
    "classifier_two_sample",
    "roc_auc",
    "high_level_features",
    "layer_profiles",
    "voxel_spectrum",
    "invariant_mass",
    "event_features",
    "features",
    "evaluate",
]
