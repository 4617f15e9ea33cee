"""The paper's Table I, measured honestly: every method, several seeds, a test split no choice saw.

    python benchmarks/paper_table.py --models tf_efficientnet_lite0 --data tf_flowers \
        --seeds 0,1,2 --heads linear,keep-pretrained --image-size 112 --epochs 3 \
        --final-epochs 4 --out runs/paper

For each model × head × seed it runs blocktune's full protocol (``blocktune.search.run``) with
the strategies layer (LW), block (BW), ranked k=3,5 (BWT3, BWT5), window 3 (BWSW) and random
(the Fig. 3 control), plus both baselines, in resumable run folders under ``--out``. Then it
writes ``paper_table.md``, ``paper_table.csv`` and ``paper_table.png``: rows are models (per
head), columns methods, cells the test accuracy mean over seeds with its std; the across-model
mean and variance rows; and the quarter of the model (by layer index) where each strategy's
chosen group lies, to test the conference paper's "fourth quarter" finding.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from blocktune.config import RunConfig  # noqa: E402
from blocktune.io import atomic_write_csv, atomic_write_text, read_csv  # noqa: E402
from blocktune.search import BASELINE_I, BASELINE_II, label, run  # noqa: E402

METHODS = [BASELINE_I, BASELINE_II, "layer", "block", "ranked-3", "ranked-5", "window", "random"]
PAPER = {"VGG16": [0.714, 0.874, 0.865, 0.876, 0.869, 0.882, 0.877],
         "MobileNet v1": [0.828, 0.876, 0.847, 0.877, 0.876, 0.884, 0.879],
         "MobileNet v2": [0.811, 0.869, 0.824, 0.867, 0.834, 0.869, 0.839],
         "MobileNet v3 small": [0.309, 0.762, 0.439, 0.790, 0.517, 0.649, 0.668],
         "ResNet50 v2": [0.778, 0.828, 0.857, 0.848, 0.869, 0.868, 0.849]}


def quarter_of(layer_indices: str, num_layers: int) -> int | None:
    if not layer_indices:
        return None
    indices = [int(i) for i in layer_indices.split(",")]
    centre = (min(indices) + max(indices)) / 2
    return min(4, int(centre / num_layers * 4) + 1)


def collect(folder: Path, seeds: list[int]) -> dict:
    """method -> {"test": [per seed], "quarter": [per seed]} from a run folder's files."""
    import json

    out: dict[str, dict[str, list]] = {}
    layers = None
    for seed in seeds:
        for row in read_csv(folder / f"seed_{seed}" / "candidates.csv"):
            if row["last"]:  # the baselines' search rows have no layer range
                layers = max(layers or 0, int(row["last"]) + 1)
        for row in read_csv(folder / f"seed_{seed}" / "finals.csv"):
            if row["status"] != "ok":
                continue
            entry = out.setdefault(row["method"], {"test": [], "quarter": []})
            entry["test"].append(float(row["test_acc"]))
            entry["quarter"].append(quarter_of(row["layer_indices"], layers or 1))
    (folder / "collected.json").write_text(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tf_efficientnet_lite0")
    parser.add_argument("--data", default="tf_flowers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--heads", default="linear")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--final-epochs", type=int, default=4)
    parser.add_argument("--max-images-per-class", type=int)
    parser.add_argument("--weights", help="weights file (one model only)")
    parser.add_argument("--out", default="runs/paper")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)

    table_rows, csv_rows = [], []
    for model in args.models.split(","):
        for head in args.heads.split(","):
            config = RunConfig(model=model, data=args.data, seeds=seeds, head=head,
                               strategies=["layer", "ranked", "block", "window", "random"],
                               image_size=args.image_size, epochs=args.epochs,
                               final_epochs=args.final_epochs, weights=args.weights,
                               max_images_per_class=args.max_images_per_class)
            folder = out / f"{model}-{head}"
            print(f"== {model}, head {head}: {folder}", flush=True)
            run(config, folder)
            results = collect(folder, seeds)
            cells, quarters = [], []
            for method in METHODS:
                tests = results.get(method, {}).get("test", [])
                mean = statistics.fmean(tests) if tests else float("nan")
                std = statistics.pstdev(tests) if len(tests) > 1 else 0.0
                cells.append((mean, std))
                qs = [q for q in results.get(method, {}).get("quarter", []) if q]
                quarters.append("/".join(f"Q{q}" for q in qs) if qs else "–")
                csv_rows.append({"model": model, "head": head, "method": label(method),
                                 "test_mean": f"{mean:.4f}", "test_std": f"{std:.4f}",
                                 "seeds": len(tests), "chosen_quarter": quarters[-1]})
            table_rows.append((f"{model} ({head})", cells, quarters))

    header = ["model"] + [label(m) for m in METHODS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, cells, _ in table_rows:
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in cells) + " |")
    columns = list(zip(*[[m for m, _ in cells] for _, cells, _ in table_rows], strict=True))
    lines.append("| mean | " + " | ".join(f"{statistics.fmean(c):.3f}" for c in columns) + " |")
    lines.append("| variance (across rows) | " + " | ".join(
        f"{statistics.pvariance(c):.4f}" for c in columns) + " |")
    lines += ["", "Quarter of the model where each chosen group lies (per seed):", "",
              "| model | " + " | ".join(label(m) for m in METHODS[2:]) + " |",
              "|" + "---|" * (len(METHODS) - 1)]
    for name, _, quarters in table_rows:
        lines.append(f"| {name} | " + " | ".join(quarters[2:]) + " |")
    lines += ["", "The paper's Table I (tf_flowers; scored on data also used for choosing):", "",
              "| model | Baseline I | Baseline II | LW | BW | BWT3 | BWT5 | BWSW |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in vs) + " |" for m, vs in PAPER.items()]
    atomic_write_text(out / "paper_table.md", "\n".join(lines) + "\n")
    atomic_write_csv(out / "paper_table.csv", csv_rows, list(csv_rows[0]))

    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(table_rows)
    for i, (name, cells, _) in enumerate(table_rows):
        xs = [j + i * width for j in range(len(METHODS))]
        ax.bar(xs, [m for m, _ in cells], width, yerr=[s for _, s in cells], capsize=3,
               label=name)
    ax.set_xticks([j + width * (len(table_rows) - 1) / 2 for j in range(len(METHODS))],
                  [label(m) for m in METHODS])
    ax.set(ylabel="test accuracy (mean ± std over seeds)", ylim=(0.5, 1.0))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "paper_table.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
