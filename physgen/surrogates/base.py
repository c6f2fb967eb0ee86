"""The :class:`Surrogate` interface every generative family implements.

Sample-shape convention, for the whole library: a conditional surrogate's ``sample(cond)``, ``cond``
``[B, C]`` in physics units, returns :class:`~physgen.data.Data` with ``x`` ``[B, *event_shape]``,
one sample per row; an unconditional one's ``sample(n=B)`` returns ``B`` samples; ``seed=`` makes
it reproducible. Samples come back in physics units: the preprocessing is fitted on the training
data, saved with the model and inverted on the way out. A family declares its typed ``Options`` and
implements :meth:`~Surrogate.build` (its networks), :meth:`~Surrogate.forward` (the training loss on
a model-space batch) and :meth:`~Surrogate.sample_model`; one with a density also
:meth:`~Surrogate.log_prob_model`. Nothing here knows a data set or a detector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from physgen.data import Data, Pipeline, Schema, Standardise
from physgen.data.rows import Rows, fit_on_rows
from physgen.errors import CheckpointError, ConfigError, InvalidDataError
from physgen.options import Options, option
from physgen.surrogates._common import check_data, conditions, draw, iter_draw
from physgen.training import TrainConfig, train
from physgen.training import checkpoint as ckpt
from physgen.training.loop import calibration_events, training_source
from physgen.training.optim import adam

if TYPE_CHECKING:
    from physgen.training import TrainContext
__all__ = ["Capabilities", "Surrogate", "SurrogateOptions"]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a surrogate can do, so callers need not try-and-catch: ``log_prob`` exact (flows, the Gaussian, small
    RBMs), a lower bound (the VAE) or unnormalised (large RBMs); ``sample`` takes conditions; ``fit`` runs the
    shared training loop (resume, DDP, AMP) or a closed form (:meth:`Surrogate.solve`)."""

    exact_density: bool = False
    density_bound: bool = False
    unnormalised_density: bool = False
    conditional: bool = True
    gradient_trained: bool = True
    closed_form: bool = False

    @property
    def has_log_prob(self) -> bool:
        return self.exact_density or self.density_bound or self.unnormalised_density


@dataclasses.dataclass(frozen=True)
class SurrogateOptions(Options):
    """Options every family has."""

    sample_precision: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", "precision of the networks when sampling: auto is bf16 where the device "
                                                                       "runs it natively (CUDA, AVX512-BF16/AMX CPUs), else fp32; fp16: CUDA only")


class Surrogate(nn.Module):
    """A generative surrogate behind one interface; ``**options`` are the family's (its ``Options`` class lists them:
    unknown keys, wrong types and values out of range raise :class:`~physgen.errors.ConfigError`)."""

    family: ClassVar[str] = ""
    Options: ClassVar[type[SurrogateOptions]] = SurrogateOptions
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: TrainConfig fields this family changes by default (e.g. the diffusion turns on the EMA)
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: the data kinds this family models
    data_kinds: ClassVar[tuple[str, ...]] = ("event",)

    def __init__(self, **options: Any):
        super().__init__()
        #: the validated options (defaults filled in); ``user_options``: what the caller passed
        self.options = self.Options.from_dict(options, where=self.family or type(self).__name__)
        self.user_options = {k: v for k, v in self.options.to_dict().items() if k in options}
        #: what was decided from the data (e.g. an RBM's hidden units); saved apart from the options
        self.resolved: dict[str, Any] = {}
        self.preprocessing: Pipeline | None = None
        self.schema: Schema | None = None
        self.dims: dict[str, int] = {}
        #: ``[[min, max], ...]`` of each condition column in the training data (physics units); sampling outside warns
        self.cond_range: list[list[float]] | None = None
        self.history: list[dict[str, Any]] = []
        #: why the last training stopped as diverged (None: it did not); such a model is neither saved nor sampled
        self.diverged: str | None = None

    # -- what a family implements -----------------------------------------------------------
    def build(self, dim: int, cond_dim: int, structure: Any = None) -> None:
        """Create the networks for ``dim`` features and ``cond_dim`` conditions (``structure``: a wrapper's :class:`FeatureStructure`)."""
        raise NotImplementedError

    def initialise(self, y: torch.Tensor, cond: torch.Tensor | None) -> None:
        """Data-dependent initialisation on the model-space training tensors, after :meth:`build` (default: none)."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a model-space batch ``x`` ``[B, dim]`` with ``cond`` ``[B, C]``, and numbers to log (floats or 0-d tensors)."""
        raise NotImplementedError

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``n`` model-space samples ``[n, dim]`` (or column blocks that join to it), ``cond`` ``[n, C]`` when conditional."""
        raise NotImplementedError

    def log_prob_model(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Log-density ``[B]`` of model-space ``x`` (only where ``capabilities`` claim one)."""
        raise NotImplementedError

    def default_preprocessing(self, data: Data) -> Pipeline:
        """The pipeline ``fit`` uses when given none: standardised features and conditions."""
        return Pipeline(x=[Standardise()], cond=[Standardise()] if data.cond is not None else [])

    def configure_optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """The optimisers the loop steps (one Adam(W) by default; a GAN returns two)."""
        return [adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, compiled=cfg.compile)]

    def train_step(self, model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None, optimizers: list[torch.optim.Optimizer], ctx: TrainContext) -> dict[str, float]:
        """One optimisation step; ``model`` is ``self``, a wrapper or its DDP shell (call it, not ``self``)."""
        optimizer = optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss, logs = ctx.compiled("loss", model)(x, cond)
        ctx.step(loss, optimizer)
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: torch.Tensor | None, batch_size: int = 4096) -> float:
        """Mean training loss over model-space validation data, in eval mode."""
        was_training, total = self.training, 0.0
        self.eval()
        for s in range(0, len(x), batch_size):
            total += float(self(x[s : s + batch_size], None if cond is None else cond[s : s + batch_size])[0]) * len(x[s : s + batch_size])
        self.train(was_training)
        return total / len(x)

    def validation_metrics(self, x: torch.Tensor, cond: torch.Tensor | None) -> dict[str, float]:
        """What the loop records on the validation split each epoch; ``val_loss`` drives early stopping."""
        return {"val_loss": self.validation_loss(x, cond)}

    def solve(self, y: torch.Tensor, c: torch.Tensor | None, y_val: torch.Tensor | None, c_val: torch.Tensor | None) -> list[dict[str, Any]] | None:
        """A closed-form fit on the prepared tensors, returning its history; None (default): train with the loop."""
        return None

    def training_rows(self, data: Data | Rows, copies: int, seed: int = 0) -> Rows:
        """The training set the loop reads: ``data`` (events, or a streamed set) and, with ``copies > 1`` (``augment``), versions under the data's symmetry."""
        if copies == 1:
            return data if isinstance(data, Rows) else Rows(data)
        raise ConfigError(f"augment={copies} needs a symmetry of the data; the bare {self.family} surrogate knows none "
                          "(calorimeter showers: physgen.calorimeter.ShowerModel)", where="train", key="augment")

    def after_fit(self, data: Data, seed: int = 0) -> None:
        """Post-fit steps on the training data in physics units (calibrations); default: none."""

    def output_step(self, calibrated: bool) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None:
        """A step applied to each block of samples in physics units (float64) before rounding to float32; default none."""
        return None

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Physics-unit clean-up of samples (e.g. non-negative energies); default: none."""
        return x

    # -- shared machinery -------------------------------------------------------------------
    is_fitted = property(lambda self: self.schema is not None, doc="Whether the surrogate was fitted or loaded.")
    name = property(lambda self: self.family, doc="How messages name this surrogate.")
    is_conditional = property(lambda self: self.dims.get("cond_dim", 0) > 0, doc="Whether ``sample`` takes conditions.")

    def device(self) -> torch.device:
        """Where the surrogate's tensors live (the CPU for one without any)."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def fit_preprocessing(self, data: Data, preprocessing: Pipeline | None = None, rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fit ``preprocessing`` (by default :meth:`default_preprocessing`) on ``data`` (or ``rows``, read batch by batch:
        :func:`~physgen.data.rows.fit_on_rows`); the training tensors in model space (float32)."""
        self.preprocessing = preprocessing if preprocessing is not None else self.default_preprocessing(data)
        rows = rows if rows is not None else Rows(data)
        y, c = fit_on_rows(self.preprocessing, rows)
        self.schema, self.cond_range = data.schema, rows.cond_range()
        return y, c

    def prepare(self, data: Data, preprocessing: Pipeline | None = None, rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fit the preprocessing on ``data`` (or streamed ``rows``: tensors of an initialisation sample), build the networks, return model-space tensors."""
        check_data(self, data, preprocessing)
        y, c = self.fit_preprocessing(data, preprocessing, rows)
        self.dims = {"event_dim": int(data.x.shape[1])}
        self.setup(int(y.shape[1]), 0 if c is None else int(c.shape[1]))
        self.initialise(y, c)
        return y, c

    def setup(self, dim: int, cond_dim: int, structure: Any = None) -> None:
        """Record the model-space dimensions and :meth:`build` (what :meth:`prepare` does; a wrapper calls it directly)."""
        self.dims = {**self.dims, "dim": dim, "cond_dim": cond_dim}
        self.build(dim, cond_dim, structure)

    def fit(self, data: Data | Rows | str | Path, preprocessing: Pipeline | None = None, *, on_epoch_end: Callable[[int, dict], None] | None = None,
            **train_options: Any) -> list[dict[str, Any]]:
        """Train on ``data`` (physics units, or a file's path or :class:`~physgen.io.rows.FileRows`: streamed); a validation split
        is taken from it; returns the per-epoch history. ``preprocessing`` replaces :meth:`default_preprocessing`; ``on_epoch_end(epoch,
        record)`` runs after each epoch; ``train_options`` are :class:`~physgen.training.TrainConfig`'s (epochs, steps, batch_size, lr, ...)."""
        if isinstance(train_options.get("checkpoint_dir"), Path):
            train_options["checkpoint_dir"] = str(train_options["checkpoint_dir"])
        cfg = TrainConfig.from_dict({**self.train_defaults, **train_options}, where="train")
        data, self.diverged = training_source(data), None
        history = train(self, data, cfg, preprocessing=preprocessing, on_epoch_end=on_epoch_end)
        self.after_fit(calibration_events(data, cfg.seed), seed=cfg.seed)
        return history

    def _require_fitted(self) -> None:
        if not self.is_fitted or self.preprocessing is None:
            raise InvalidDataError(f"{self.family} surrogate is not fitted: call fit(data) or load(dir) first")
        if self.diverged:
            raise InvalidDataError(f"this {self.name} surrogate's training diverged ({self.diverged}); fit it again")

    @torch.no_grad()
    def sample(self, cond: Any = None, n: int | None = None, *, seed: int | None = None, batch_size: int = 10_000, precision: str | None = None,
               calibrated: bool = True, strict: bool = False) -> Data:
        """``Data`` with ``x`` ``[B, *event_shape]`` (float32, physics units) and ``cond``: one sample per row of ``cond`` ``[B, C]``
        (or a ``Data``), in the model's units (``schema.cond_units``) or as text (``"5 GeV"``); ``n`` samples if unconditional.
        ``seed`` makes them reproducible, ``batch_size`` bounds the rows per forward pass, ``precision`` ("auto", "fp32", "bf16",
        "fp16" on CUDA) overrides ``sample_precision``, ``calibrated=False`` skips the post-fit calibrations, and ``strict``
        makes conditions outside the training range an error instead of a warning."""
        self._require_fitted()
        return draw(self, *conditions(self, cond, n, strict), seed, batch_size, precision, calibrated)

    def iter_sample(self, cond: Any = None, n: int | None = None, *, chunk_size: int = 10_000, seed: int | None = None,
                    batch_size: int = 10_000, precision: str | None = None, calibrated: bool = True, strict: bool = False) -> Iterator[Data]:
        """:meth:`sample` in chunks of ``chunk_size`` events (memory: one chunk); chunk ``i`` is drawn with the seed
        :func:`~physgen.surrogates.chunk_seed` ``(seed, i)``, so the chunks can be spread over processes (``physgen.generate``)."""
        self._require_fitted()
        return iter_draw(self, *conditions(self, cond, n, strict), chunk_size, seed, batch_size, precision, calibrated)

    @torch.no_grad()
    def log_prob(self, data: Data, **kwargs: Any) -> torch.Tensor:
        """Log-density ``[N]`` of ``data`` in model space: exact, a bound or unnormalised as :attr:`capabilities` says.

        Compare surrogates that share a preprocessing; ``kwargs`` go to :meth:`log_prob_model` (the VAE's ``k``).
        """
        if not self.capabilities.has_log_prob:
            raise InvalidDataError(f"the {self.family} surrogate has no log_prob (capabilities: {self.capabilities})")
        self._require_fitted()
        y, c = self.preprocessing.forward(data.x, data.cond)  # type: ignore[union-attr]
        self.eval()
        dev = self.device()
        return self.log_prob_model(y.float().to(dev), None if c is None or not self.is_conditional else c.float().to(dev), **kwargs).cpu()

    # -- persistence ------------------------------------------------------------------------
    def checkpoint_config(self) -> dict[str, Any]:
        """The JSON config saved next to the weights (subclasses add their parts)."""
        from physgen import __version__

        if self.preprocessing is None or self.schema is None or self.diverged:
            raise CheckpointError(f"cannot save an unfitted or diverged {self.name} surrogate" + (f" ({self.diverged})" if self.diverged else ""))
        return {
            "family": self.family, "class": f"{type(self).__module__}:{type(self).__qualname__}", "physgen_version": __version__,
            "options": self.user_options, "resolved": self.resolved, "dims": self.dims, "schema": self.schema.to_dict(),
            "preprocessing": self.preprocessing.to_dict(), "capabilities": dataclasses.asdict(self.capabilities),
            "cond_range": self.cond_range,
        }

    def save(self, directory: str | Path, training_state: dict[str, Any] | None = None) -> Path:
        """Save weights (safetensors) and config (JSON) to ``directory``, atomically."""
        return ckpt.write_checkpoint(directory, self, self.checkpoint_config(), training_state)

    def restore(self, config: dict[str, Any], build: bool = True) -> None:
        """Rebuild the fitted state from a checkpoint's ``config`` before the weights are loaded (``build=False``: not the networks)."""
        self.resolved, self.cond_range = dict(config.get("resolved", {})), config.get("cond_range")
        self.schema, self.preprocessing = Schema.from_dict(config["schema"]), Pipeline.from_dict(config["preprocessing"])
        self.dims = {k: int(v) for k, v in config["dims"].items()}
        if build:
            self.build(self.dims["dim"], self.dims["cond_dim"])

    @classmethod
    def load(cls, directory: str | Path) -> Surrogate:
        """Load a checkpoint of this class (``physgen.surrogates.load`` loads one of any class); else :class:`CheckpointError`."""
        config = ckpt.read_config(directory)
        if cls is Surrogate or config.get("class") != f"{cls.__module__}:{cls.__qualname__}" and config.get("family") != cls.family:
            raise CheckpointError(f"checkpoint {str(directory)!r} holds a {config.get('family')!r} surrogate, not {cls.family or cls.__name__!r}; "
                                  "physgen.surrogates.load(directory) loads any class")
        return cls.from_checkpoint(config, directory)

    @classmethod
    def from_checkpoint(cls, config: dict[str, Any], directory: str | Path) -> Surrogate:
        """The surrogate a checkpoint's ``config`` (read and checked) and weights describe."""
        try:
            model = cls(**config.get("options", {}))
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {str(directory)!r}: its options are not valid for this physgen ({exc})") from exc
        model.restore(config)
        ckpt.load_weights(model, directory, config)
        state = ckpt.read_training_state(directory)
        if state is not None and "history" in state:
            model.history = list(state["history"])
        model.eval()
        return model
