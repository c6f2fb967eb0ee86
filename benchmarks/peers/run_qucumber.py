"""QuCumber's complex-wavefunction or density-matrix tutorial on a data directory, timed (run in a scratch venv).

    python -m venv /tmp/qc && /tmp/qc/bin/pip install torch==2.13.0 && /tmp/qc/bin/pip install qucumber --no-deps
    /tmp/qc/bin/pip install tqdm numpy scipy matplotlib
    /tmp/qc/bin/python benchmarks/peers/run_qucumber.py DIR [EPOCHS]

DIR holds the files benchmarks/quantum_complex.py or quantum_density.py writes for it (``--peer-data``):
``train.txt``, ``train_bases.txt``, ``bases.txt`` and the exact state, ``psi.txt`` (a wave function: real
and imaginary columns) or ``rho_real.txt`` and ``rho_imag.txt`` (a density matrix). Settings are the
tutorials': as many hidden (and auxiliary) units as qubits, batches of 100, 500 epochs unless given;
wave function: lr 0.1, k = 1 (tutorial 2); density matrix: k = 10, Adadelta at lr 10 halved every 125
epochs (tutorial 3). Prints one JSON line with the fidelity and KL every 25 epochs and the training time
(the metric evaluations excluded).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from qucumber.callbacks import MetricEvaluator
from qucumber.nn_states import ComplexWaveFunction, DensityMatrix
from qucumber.utils import data, unitaries
from qucumber.utils import training_statistics as ts


def main(directory: str, epochs: int = 500) -> None:
    torch.set_num_threads(2)
    d = Path(directory)
    paths = [str(d / "train.txt"), str(d / "train_bases.txt"), str(d / "bases.txt")]
    if (d / "rho_real.txt").exists():
        torch.manual_seed(1234)
        samples, target, train_bases, bases = data.load_data_DM(paths[0], str(d / "rho_real.txt"), str(d / "rho_imag.txt"), *paths[1:])
        nv = samples.shape[-1]
        state = DensityMatrix(num_visible=nv, num_hidden=nv, num_aux=nv, unitary_dict=unitaries.create_dict(), gpu=False)
        settings = {"lr": 10, "k": 10, "optimizer": torch.optim.Adadelta, "scheduler": torch.optim.lr_scheduler.StepLR,
                    "scheduler_args": {"step_size": 125, "gamma": 0.5}}
    else:
        torch.manual_seed(0)
        samples, target, train_bases, bases = data.load_data(paths[0], str(d / "psi.txt"), *paths[1:])
        nv = samples.shape[-1]
        state = ComplexWaveFunction(num_visible=nv, num_hidden=nv, unitary_dict=unitaries.create_dict(), gpu=False)
        settings = {"lr": 0.1, "k": 1}
    space = state.generate_hilbert_space()
    metric_seconds = []

    def timed(fn):
        def wrapper(nn_state, **kw):
            t0 = time.perf_counter()
            out = fn(nn_state, **kw)
            metric_seconds.append(time.perf_counter() - t0)
            return out
        return wrapper

    callback = MetricEvaluator(25, {"fidelity": timed(ts.fidelity), "KL": timed(ts.KL)}, target=target, bases=bases, space=space)
    t0 = time.perf_counter()
    state.fit(samples, epochs=epochs, pos_batch_size=100, neg_batch_size=100, input_bases=train_bases, callbacks=[callback], **settings)
    seconds = time.perf_counter() - t0 - sum(metric_seconds)
    print(json.dumps({"peer": "qucumber", "epochs": epochs, "seconds": seconds, "fidelity": [float(f) for f in callback["fidelity"]],
                      "kl": [float(k) for k in callback["KL"]]}))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
