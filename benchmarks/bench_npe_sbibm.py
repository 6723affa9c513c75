"""C2ST benchmark of Appa's NPE against sbi's NPE and the published sbibm figures.

For each task and simulation budget, one estimator of each method is trained on the same
simulations (amortised) and draws 10,000 posterior samples for each reference observation; the
draws are cached under OUT/draws, so scoring can be rerun without retraining. Each set of draws
is then compared with sbibm's 10,000 reference draws by C2ST (z-scored by the reference, MLP
with two hidden layers of 10*dim, 5-fold accuracy; 0.5 is perfect; the classifiers of all
observations train together, see appa.npe.diagnostics.c2st_many). Results are appended to a
JSON-lines file as they come, so an interrupted run resumes where it stopped; a table with the
published NPE (NSF) figures of Lueckmann et al. 2021 and the ratio ours/sbi is printed at the end.

    python benchmarks/bench_npe_sbibm.py --tasks two_moons --budgets 1000 --observations 1 2
    python benchmarks/bench_npe_sbibm.py                     # everything (hours on 2 cores)
    python benchmarks/bench_npe_sbibm.py --draw-only         # train and draw, score later
    python benchmarks/bench_npe_sbibm.py --threads-check     # 1 vs 2 torch threads, training
    python benchmarks/bench_npe_sbibm.py --summarise docs/npe/*.jsonl --out docs/npe  # table, plot

Needs the sbibm reference files (`pip install --no-deps sbibm`) and, for the baseline, sbi
(`pip install -e .[bench]`); methods whose package is missing are skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from appa.npe import (
    EstimatorConfig,
    NPETrainingConfig,
    build_estimator,
    make_problem,
    train_ensemble,
)
from appa.npe.diagnostics import c2st_many

# NPE (NSF) C2ST of Lueckmann et al. 2021 (sbibm 1.1.0), mean over observations 1-10
PUBLISHED = {
    ("two_moons", 1000): 0.725,
    ("two_moons", 10000): 0.606,
    ("gaussian_linear", 1000): 0.694,
    ("gaussian_linear", 10000): 0.552,
    ("gaussian_mixture", 1000): 0.716,
    ("gaussian_mixture", 10000): 0.615,
}


HELDOUT_SEED = 10**6  # apart from every training seed (seed + budget)


def train_appa(task, theta, x, kind: str, members: int, seed: int, args):
    cfg = EstimatorConfig(kind=kind)
    if kind == "flow":
        cfg.flow.hidden = args.hidden
        cfg.flow.transforms = args.transforms
        cfg.flow.bins = args.bins
    train = NPETrainingConfig(
        seed=seed,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        patience=args.patience,
        threads=0,
    )
    ensemble, results = train_ensemble(
        lambda: build_estimator(task.prior, task.x_shape, cfg), theta, x, members, train
    )
    sampler = ensemble.members[0] if members == 1 else ensemble
    return sampler, sum(r.seconds for r in results)


def train_sbi(task, theta, x, seed: int, log_dir: Path):
    from sbi.inference import NPE
    from sbi.utils import BoxUniform as SbiBoxUniform

    prior = task.prior
    if np.isfinite(prior.low.numpy()).all():
        sbi_prior = SbiBoxUniform(prior.low.float(), prior.high.float())
    else:
        sbi_prior = torch.distributions.MultivariateNormal(
            prior.loc.float(), torch.diag(prior.scale.float() ** 2)
        )
    torch.manual_seed(seed)
    start = time.perf_counter()
    from torch.utils.tensorboard import SummaryWriter

    # sbi logs to ./sbi-logs unless given a writer: keep its logs under --out
    inference = NPE(
        prior=sbi_prior,
        density_estimator="nsf",
        show_progress_bars=False,
        summary_writer=SummaryWriter(str(log_dir)),
    )
    estimator = inference.append_simulations(theta, x).train()
    seconds = time.perf_counter() - start
    posterior = inference.build_posterior(estimator)

    class Wrapped:
        def sample(self, x_o, n, seed=0):
            torch.manual_seed(seed)
            return posterior.sample((n,), x=x_o, show_progress_bars=False)

    return Wrapped(), seconds


def threads_check(out: Path) -> None:
    """Trains the same small flow with 1 and 2 torch threads and prints the times."""
    task = make_problem("two_moons")
    theta, x = task.sample_joint(1000, seed=0)
    rows = []
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        est = build_estimator(task.prior, task.x_shape, EstimatorConfig())
        cfg = NPETrainingConfig(max_epochs=20, patience=100, threads=0)
        from appa.npe import train_estimator

        r = train_estimator(est, theta, x, cfg)
        rows.append({"threads": threads, "seconds_20_epochs": r.seconds})
        print(f"threads={threads}: 20 epochs on 1000 two_moons pairs in {r.seconds:.1f} s")
    (out / "threads.json").write_text(json.dumps(rows, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--tasks", nargs="+", default=["two_moons", "gaussian_linear", "gaussian_mixture"]
    )
    p.add_argument("--budgets", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--observations", nargs="+", type=int, default=list(range(1, 11)))
    p.add_argument(
        "--methods", nargs="+", default=["appa-flow", "sbi"], help="appa-flow, appa-diffusion, sbi"
    )
    p.add_argument("--members", type=int, default=1, help="ensemble members of appa estimators")
    p.add_argument("--batch-size", type=int, default=128, help="appa estimators' batch size")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="appa estimators' rate")
    p.add_argument("--patience", type=int, default=20, help="appa early-stopping patience")
    p.add_argument("--lr-schedule", choices=["constant", "plateau"], default="constant")
    p.add_argument("--hidden", nargs="+", type=int, default=[64, 64], help="appa flow layers")
    p.add_argument("--transforms", type=int, default=5, help="appa flow transforms")
    p.add_argument("--bins", type=int, default=8, help="appa spline bins")
    p.add_argument(
        "--heldout",
        type=int,
        default=5000,
        help="fresh simulations on which appa's mean log q(theta | x) is reported (0: none)",
    )
    p.add_argument("--samples", type=int, default=10000, help="draws per observation for C2ST")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/bench_npe"))
    p.add_argument("--threads-check", action="store_true")
    p.add_argument(
        "--summarise",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="only tabulate and plot these results.jsonl files (plot under --out)",
    )
    p.add_argument(
        "--draw-only", action="store_true", help="train and cache posterior draws, no C2ST"
    )
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.threads_check:
        threads_check(args.out)
        return
    if args.summarise:
        summarise(args.summarise, args.out / "c2st.png")
        return
    results_path = args.out / "results.jsonl"
    done = set()
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            # a row counts only for the settings it was scored with
            settings_key = json.dumps(r.get("settings"), sort_keys=True)
            done.add((r["task"], r["budget"], r["method"], r["observation"], settings_key))

    for task_name in args.tasks:
        task = make_problem(task_name)
        references = {o: task.reference(o) for o in args.observations}
        for budget in args.budgets:
            for method in args.methods:
                key = json.dumps(settings(method, args), sort_keys=True)
                todo = [
                    o for o in args.observations if (task_name, budget, method, o, key) not in done
                ]
                if not todo:
                    continue
                draws = posterior_draws(task, task_name, budget, method, todo, references, args)
                if draws is None or args.draw_only:
                    continue
                t0 = time.perf_counter()
                scores = c2st_many(
                    [(references[o][2][: args.samples], draws["draws"][o]) for o in todo]
                )
                c2st_s = (time.perf_counter() - t0) / len(todo)
                with results_path.open("a") as f:
                    for o, acc in zip(todo, scores, strict=True):
                        row = {
                            "task": task_name,
                            "budget": budget,
                            "method": method,
                            "observation": o,
                            "c2st": acc,
                            "train_s": draws["train_s"],
                            "sample_s": draws["sample_s"][o],
                            "c2st_s": c2st_s,
                            "members": args.members if method != "sbi" else 1,
                            "settings": draws["settings"],
                            "heldout_logq": draws.get("heldout_logq"),
                        }
                        f.write(json.dumps(row) + "\n")
                        print(f"  {task_name} n={budget} {method} obs {o}: c2st {acc:.3f}")
    if results_path.exists():
        summarise([results_path], args.out / "c2st.png")


def settings(method: str, args) -> dict:
    """The options that shape a method's estimator (recorded with its draws and scores)."""
    if method == "sbi":
        return {"seed": args.seed}
    names = ["members", "batch_size", "learning_rate", "lr_schedule", "patience"]
    names += ["hidden", "transforms", "bins", "seed"]
    return {name: getattr(args, name) for name in names}


def posterior_draws(task, task_name, budget, method, observations, references, args):
    """Trains one estimator on ``budget`` simulations and draws ``args.samples`` posterior
    samples for each observation; cached under ``args.out/draws`` so that scoring can be rerun
    (or resumed) without retraining. ``None`` when the method's package is missing."""
    path = args.out / "draws" / f"{task_name}-{budget}-{method}.pt"
    cached = torch.load(path) if path.exists() else None
    if cached is not None and cached.get("settings") != settings(method, args):
        raise SystemExit(
            f"{path} was drawn with settings {cached.get('settings')}, not "
            f"{settings(method, args)}: give another --out"
        )
    if cached is not None and all(o in cached["draws"] for o in observations):
        return cached
    theta, x = task.sample_joint(budget, seed=args.seed + budget)
    try:
        if method == "sbi":
            posterior, seconds = train_sbi(task, theta, x, args.seed, args.out / "sbi-logs")
        else:
            kind = method.split("-", 1)[1]
            posterior, seconds = train_appa(task, theta, x, kind, args.members, args.seed, args)
    except ImportError as error:
        print(f"skip {method}: {error}")
        return None
    out = {"train_s": seconds, "draws": {}, "sample_s": {}, "settings": settings(method, args)}
    message = f"{task_name} n={budget} {method}: trained in {seconds:.0f} s"
    if method != "sbi" and args.heldout:
        # the choice of settings is made on this, never on the reference posteriors
        theta_h, x_h = task.sample_joint(args.heldout, seed=args.seed + budget + HELDOUT_SEED)
        with torch.no_grad():
            out["heldout_logq"] = float(posterior.log_prob(theta_h, x_h).mean())
        message += f"; mean log q on {args.heldout} held-out pairs {out['heldout_logq']:.4f}"
    print(message, flush=True)
    for o in observations:
        t0 = time.perf_counter()
        samples = posterior.sample(references[o][0], args.samples, seed=o)
        out["sample_s"][o] = time.perf_counter() - t0
        out["draws"][o] = samples.reshape(args.samples, -1).detach().float()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(path)
    return out


def _label(row: dict) -> str:
    """The method, with the ensemble size and learning-rate schedule where they differ."""
    label = row["method"]
    if row.get("members", 1) > 1:
        label += f" x{row['members']}"
    if (row.get("settings") or {}).get("lr_schedule", "constant") != "constant":
        label += f" {row['settings']['lr_schedule']}"
    return label


def summarise(results_paths: list[Path], plot: Path | None = None) -> None:
    """Prints mean C2ST per task, budget and method (ensembles labelled by their size) beside
    the published figures, and plots them to ``plot`` (PNG) when given."""
    rows = [json.loads(line) for p in results_paths for line in p.read_text().splitlines()]
    cells: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["budget"]), {}).setdefault(_label(r), []).append(r["c2st"])
    labels = sorted({_label(r) for r in rows})
    header = f"{'task':18s} {'budget':>7s} " + " ".join(f"{m:>16s}" for m in labels)
    print("\nmean C2ST over the observations run (count in brackets); published = NPE (NSF), sbibm")
    print(header + f" {'published':>10s} {'best appa/sbi':>14s}")
    for (task, budget), by in sorted(cells.items()):
        parts = []
        for m in labels:
            v = by.get(m)
            parts.append(f"{np.mean(v):10.3f} ({len(v):2d})" if v else f"{'-':>16s}")
        pub = PUBLISHED.get((task, budget))
        ours = [np.mean(v) for m, v in by.items() if m.startswith("appa")]
        ratio = f"{min(ours) / np.mean(by['sbi']):.3f}" if ours and by.get("sbi") else "-"
        pub_s = f"{pub:.3f}" if pub else "-"
        print(f"{task:18s} {budget:7d} " + " ".join(parts) + f" {pub_s:>10s} {ratio:>14s}")
    if plot is not None:
        _plot(cells, labels, plot)


def _plot(cells: dict, labels: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for task, _ in cells})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        budgets = sorted(b for t, b in cells if t == task)
        for k, m in enumerate(labels):
            xs = [b for b in budgets if m in cells[(task, b)]]
            values = [cells[(task, b)][m] for b in xs]
            if not xs:
                continue
            shift = [b * 1.06 ** (k - len(labels) / 2) for b in xs]
            lo = [np.mean(v) - min(v) for v in values]
            hi = [max(v) - np.mean(v) for v in values]
            ax.errorbar(shift, [np.mean(v) for v in values], yerr=[lo, hi], fmt="o-", label=m,
                        capsize=3)  # fmt: skip
        pub = [(b, PUBLISHED[(task, b)]) for b in budgets if (task, b) in PUBLISHED]
        if pub:
            ax.plot(*zip(*pub, strict=True), "kx--", label="published NPE")
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("simulations")
        ax.axhline(0.5, color="0.7", lw=0.8)
    axes[0][0].set_ylabel("C2ST (0.5 best)")
    fig.suptitle("mean and min-max over observations", fontsize=8, y=0.99)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
