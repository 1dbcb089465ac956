"""Does `compile=true` pay for a recipe? Eager and compiled trials side by side in one run.

    python benchmarks/compile_benefit.py --dataset digits [--epochs 3] [--threads 2]
    python benchmarks/compile_benefit.py --dataset mnist --epochs 2 --data-root ../shared/datasets

For one recipe (its model, batch, loss drainage): the same trial eager and with compile=true.
Prints the compile time (torch's compilation metrics, as recorded per trial), the training
samples per second of the epochs after the first (the first epoch of the compiled trial holds
the compilation), the break-even point (compile seconds / seconds saved per epoch) against the
recipe's epochs, and how far the numbers move: the largest difference of the logits, the loss
and the gradients of one training batch computed compiled vs eager from the same parameters
(float error, if compile is a rounding change only), and the final test accuracy of both trials.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from drainage_bench.config import build_config
from drainage_bench.trainer.loop import run_trial


def samples_per_second(result, n_train: int) -> float:
    later = [e["train_seconds"] for e in result.epochs[1:]] or [result.epochs[0]["train_seconds"]]
    return n_train / statistics.median(later)


def one_batch_difference(config) -> dict[str, float]:
    """Max |compiled - eager| of logits, loss and gradients on one batch, same parameters."""
    from drainage_bench.trainer.data import DATASETS, load_dataset, resolve_data_root
    from drainage_bench.trainer.losses import LOSSES, make_loss
    from drainage_bench.trainer.models import make_model

    torch.manual_seed(0)
    data = load_dataset(config.dataset, resolve_data_root(config.data_root))
    info = DATASETS[config.dataset]
    extra = LOSSES[config.loss].extra_outputs
    model = make_model(config.model, data.num_classes, info.in_channels, info.image_size, extra_outputs=extra)
    loss_fn = make_loss(config.loss, data.num_classes, **config.params)
    x = data.train_images[: config.batch_size].float().div(255)
    x = (x - torch.tensor(data.mean).view(1, -1, 1, 1)) / torch.tensor(data.std).view(1, -1, 1, 1)
    y = data.train_labels[: config.batch_size]
    out = {}
    for name, m, f in (("eager", model, loss_fn), ("compiled", torch.compile(model), torch.compile(loss_fn))):
        model.zero_grad(set_to_none=True)
        logits = m(x)
        loss = f(logits, y)
        loss.backward()
        out[name] = (logits.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()])
    (le, se, ge), (lc, sc, gc) = out["eager"], out["compiled"]
    return {"logits": float((le - lc).abs().max()), "logits_scale": float(le.abs().max()),
            "loss": float((se - sc).abs()), "loss_value": float(se),
            "grad_rel": max(float((a - b).abs().max()) for a, b in zip(ge, gc)) / max(float(a.abs().max()) for a in ge)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--loss", default="drainage")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"epochs": args.epochs, "device": "cpu", **({"data_root": args.data_root} if args.data_root else {})}
    recipe = build_config(args.dataset, args.loss)
    eager_cfg = build_config(args.dataset, args.loss, {**overrides, "compile": False})
    compiled_cfg = eager_cfg.replace(compile=True)
    assert eager_cfg.trial_id == compiled_cfg.trial_id  # compile is not part of the identity
    diff = one_batch_difference(eager_cfg)
    eager = run_trial(eager_cfg)
    compiled = run_trial(compiled_cfg)
    for r in (eager, compiled):
        assert r.status == "ok", r.error
    from drainage_bench.trainer.loop import pick_device, prepare

    n = prepare(eager_cfg, pick_device("cpu")).n_train
    se, sc = samples_per_second(eager, n), samples_per_second(compiled, n)
    seconds = compiled.extra["compile_seconds"]
    saved = n / se - n / sc
    breakeven = seconds / saved if saved > 0 else float("inf")
    print(f"{args.dataset} ({eager_cfg.model}, batch {eager_cfg.batch_size}, {args.loss}), {args.threads} threads, "
          f"{args.epochs} epochs, torch {torch.__version__}")
    print(f"  eager     {se:9,.0f} samples/s   final test acc {100 * eager.summary['final_test_acc']:.2f}%")
    print(f"  compiled  {sc:9,.0f} samples/s   final test acc {100 * compiled.summary['final_test_acc']:.2f}%   "
          f"({compiled.extra['compile_status']}, compile {seconds:.1f} s)")
    print(f"  ratio {sc / se:.2f}x; saves {saved:.2f} s per epoch; break-even after {breakeven:.1f} epochs; "
          f"the recipe trains {recipe.epochs}: compile {'pays' if breakeven < recipe.epochs else 'does not pay'}")
    print(f"  one batch, compiled vs eager: max |logits diff| {diff['logits']:.2e} (logits up to "
          f"{diff['logits_scale']:.2f}), |loss diff| {diff['loss']:.2e} (loss {diff['loss_value']:.4f}), "
          f"max |gradient diff| / max |gradient| {diff['grad_rel']:.2e}")


if __name__ == "__main__":
    main()
