"""QuCumber's density-matrix tutorial on a data directory, timed (run in a scratch venv, as qucumber_complex.py).

    /tmp/qc/bin/python benchmarks/peers/qucumber_density.py DIR [EPOCHS]

DIR holds the files benchmarks/quantum_density.py writes for it: ``train.txt``, ``train_bases.txt``,
``rho_real.txt``, ``rho_imag.txt`` and ``bases.txt``. Settings are the tutorial's: as many hidden and
auxiliary units as qubits, 500 epochs, batches of 100, k = 10, Adadelta at lr 10 halved every 125
epochs. Prints one JSON line with the fidelity and KL every 25 epochs and the training time (the
metric evaluations excluded).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from qucumber.callbacks import MetricEvaluator
from qucumber.nn_states import DensityMatrix
from qucumber.utils import data, unitaries
from qucumber.utils import training_statistics as ts


def main(directory: str, epochs: int = 500) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(1234)
    d = Path(directory)
    samples, rho, train_bases, bases = data.load_data_DM(str(d / "train.txt"), str(d / "rho_real.txt"), str(d / "rho_imag.txt"),
                                                        str(d / "train_bases.txt"), str(d / "bases.txt"))
    nv = samples.shape[-1]
    state = DensityMatrix(num_visible=nv, num_hidden=nv, num_aux=nv, unitary_dict=unitaries.create_dict(), gpu=False)
    space = state.generate_hilbert_space()
    metric_seconds = []

    def timed(fn):
        def wrapper(nn_state, **kw):
            t0 = time.perf_counter()
            out = fn(nn_state, **kw)
            metric_seconds.append(time.perf_counter() - t0)
            return out
        return wrapper

    callback = MetricEvaluator(25, {"fidelity": timed(ts.fidelity), "KL": timed(ts.KL)}, target=rho, bases=bases, space=space)
    t0 = time.perf_counter()
    state.fit(samples, epochs=epochs, pos_batch_size=100, neg_batch_size=100, lr=10, k=10, input_bases=train_bases, callbacks=[callback],
              optimizer=torch.optim.Adadelta, scheduler=torch.optim.lr_scheduler.StepLR, scheduler_args={"step_size": 125, "gamma": 0.5})
    seconds = time.perf_counter() - t0 - sum(metric_seconds)
    print(json.dumps({"peer": "qucumber", "epochs": epochs, "seconds": seconds, "fidelity": [float(f) for f in callback["fidelity"]],
                      "kl": [float(k) for k in callback["KL"]]}))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
