"""Example slices of acdc-phantom patients, to show how much patients differ (image + label contours).

Usage (from the repository root; writes the PNG next to this script):

    python results/phantom/plot_acdc_phantom_examples.py [--patients 21,4,6,19] [-o PATH]

Each column is one patient (its diagnostic group, zoom and look-alikes differ), top row a basal
and bottom row a mid-ventricular slice of the ED frame, min-max normalised per volume as the
``acdc`` loader does. Contours: RV red, Myo green, LV blue. The patients are generated in memory
(``generate_patient``), so no data folder is needed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssl_bench.datasets.phantom import PHANTOM_VERSION, generate_patient  # noqa: E402

COLOURS = {1: "tab:red", 2: "tab:green", 3: "tab:blue"}


def plot(patients: list[int], out: Path) -> None:
    fig, axes = plt.subplots(2, len(patients), figsize=(2.4 * len(patients), 5.0), squeeze=False)
    for col, index in enumerate(patients):
        p = generate_patient(index)
        image, label = p["ED"]
        image = image.astype(np.float32)
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-8)
        for row, z in enumerate((1, len(image) // 2)):
            ax = axes[row, col]
            ax.imshow(image[z], cmap="gray", vmin=0, vmax=1)
            for cls, colour in COLOURS.items():
                if (label[z] == cls).any():
                    ax.contour(label[z] == cls, levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"patient{index:03d} ({p['info']['Group']})\n{p['spacing'][1]:.2f} mm/px",
                             fontsize=8)
            if col == 0:
                ax.set_ylabel("basal" if row == 0 else "mid", fontsize=8)
    fig.suptitle(f"acdc-phantom v{PHANTOM_VERSION}, ED frame; RV red, Myo green, LV blue", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")  # written whole, then renamed into place
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="21,1,4,11",
                        help="comma-separated patient numbers (1-30); default: a labeled patient of "
                             "split seed 0 and three test patients")
    parser.add_argument("-o", "--out", type=Path,
                        default=Path(__file__).with_name(f"acdc-phantom_v{PHANTOM_VERSION}_examples.png"))
    args = parser.parse_args()
    patients = [int(p) for p in args.patients.split(",")]
    bad = [p for p in patients if not 1 <= p <= 30]
    if bad:
        parser.error(f"--patients: {bad} outside 1-30; the phantom has patients 1 to 30")
    plot(patients, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
