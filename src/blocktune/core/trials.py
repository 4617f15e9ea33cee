"""What an executor runs: a search trial (a group trained for some epochs, maybe a rung of
successive halving) and a final trial (a group fine-tuned and tested). Plain frozen values, the
contract between the driver that plans them and the executors that run them."""

from __future__ import annotations

from dataclasses import dataclass

from blocktune.core.methods import PROBED, indices_text, recipe_of

PRUNE_ETA = 3  # successive halving keeps the best third after each rung


def rungs(epochs: int, eta: int = PRUNE_ETA, grace: int = 1) -> list[int]:
    """Successive-halving rungs at grace, grace·eta, grace·eta², … epochs, ending at ``epochs``:
    9 → [1, 3, 9], 5 → [1, 3, 5], 2 → [1, 2], 1 → [1]; with grace 2, 5 → [2, 5]."""
    ladder = [max(1, min(grace, epochs))]
    while ladder[-1] * eta < epochs:
        ladder.append(ladder[-1] * eta)
    return ladder if ladder[-1] == epochs else [*ladder, epochs]


@dataclass(frozen=True)
class Trial:
    """One training to run: a group of layers (None: every layer; (): the head alone).

    Args:
        method: the row's method (``block``, ``ranked-3``, ``baseline-I``…).
        index: the candidate's index in its strategy's search order.
        epochs: train until this epoch (a rung, or the whole budget).
        final: this training's row is the candidate's result, not a rung's.
        resume_rung: the rung (epochs) whose saved state it continues from; 0 from the
            pretrained weights.
        copy_of: the key of a finished row of the same group and epochs: nothing is trained,
            that row is copied (training depends only on the group, the seed and the data).
    """

    method: str
    index: int
    group: tuple[int, ...] | None
    epochs: int
    final: bool = True
    resume_rung: int = 0
    copy_of: tuple[str, str, str] | None = None

    @property
    def indices(self) -> str:
        return indices_text(self.group)

    @property
    def key(self) -> tuple[str, str, str]:
        """(method, layer indices, rung epochs): what a ``candidates.csv`` row is keyed by."""
        return (self.method, self.indices, str(self.epochs))


@dataclass(frozen=True)
class FinalTrial:
    """A fine-tune on search+train with val for the schedule, scored once on test."""

    method: str
    group: tuple[int, ...] | None
    search_val_acc: float
    copy_of: str | None = None  # the method whose finished final trained the same group
    fold: int | None = None  # a cross-validation fold (--choose-by cvK) instead of the final
    all_learning: bool = False  # trained on every learning image, nothing held out (cvK's final)

    @property
    def indices(self) -> str:
        return indices_text(self.group)

    @property
    def recipe(self) -> str | None:
        return recipe_of(self.method)

    @property
    def groups(self) -> tuple[tuple[int, ...] | None, ...]:
        """Every group it trains: its own, after the head alone for a probed recipe."""
        return ((),) + (self.group,) if self.recipe in PROBED else (self.group,)
