"""KOALA where the clients know what the server's proxy data does not: held-out perplexity of
the large model against every baseline, over seeds; client storage, FLOPs and upload bytes.

The data (`splitkd_flwr.data.knowledge`): the clients hold whole dialogues of six topics
(the ones with facts: routes, songs, warning lights, ...); the server's proxy holds the
other six topics' dialogues and the clients' *prompts* ("Driver: ... Assistant:") without
their answers; held-out is client-topic dialogues nobody saw. The large model starts
untrained (random init, the default teacher's architecture): it has never seen the clients'
knowledge. Methods, each from that same start and over the same rounds:

- ``untrained``: the start;
- ``proxy-only``: CE on the proxy (text + prompts), as many large-model steps as KOALA's;
- ``koala-homogeneous``: every client trains one small architecture;
- ``koala-heterogeneous``: client i trains architecture ``i % 2``;
- ``fedavg-large``: clients train the large model itself, the server averages (the
  conventional approach KOALA replaces: clients that could run it);
- ``centralized``: the large model trained on all client data plus the proxy (the ceiling).

KOALA's server step (`koala.transfer.server_transfer`) is FedAvg per architecture, token-level
reverse KD on the proxy (soft labels through top-k uploads when ``--top-k`` > 0), sequence-level
KD (`koala.sequence`: the small models answer proxy prompts, the large model trains on the
answers weighted by the consensus), forward KD back to the small models. The very functions
the Flower strategy calls; no Flower here. Writes ``koala_results.json`` into ``--output``::

    .venv/bin/python bench/koala_experiment.py                 # 3 seeds
    .venv/bin/python bench/koala_experiment.py --k-sweep 1,8,64 # effect of top-k, seed 0
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel

from splitkd_flwr.data.knowledge import knowledge_split
from splitkd_flwr.data.loading import Examples, encode_documents, iterate_batches
from splitkd_flwr.data.tokenizer import EOS_ID, PAD_ID
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.koala.run import (
    concat_examples,
    koala_models,
    prompt_ids,
    prompt_rows,
)
from splitkd_flwr.koala.sequence import SequenceKD
from splitkd_flwr.koala.topk import upload_bytes_per_token
from splitkd_flwr.koala.transfer import (
    count_parameters,
    epoch_batches,
    fedavg,
    server_transfer,
    state_of,
    train_ce,
    unlabelled_kd_loss,
)
from splitkd_flwr.simulation.cost import TRAIN_FACTOR, ModelShape
from splitkd_flwr.split.evaluate import evaluate_lm

METHODS = (
    "untrained",
    "proxy-only",
    "koala-homogeneous",
    "koala-heterogeneous",
    "fedavg-large",
    "centralized",
)
PAPER_STORAGE, PAPER_FLOPS = "97.2-97.6%", "98.4-98.6%"


def train_flops_per_token(config: dict, seq_len: int) -> float:
    """Training FLOPs per token of a Llama-style model (forward x 3, attention included)."""
    shape = ModelShape.from_config(config)
    forward = shape.layers * shape.layer_forward_flops(
        seq_len
    ) + shape.head_forward_flops(seq_len)
    return TRAIN_FACTOR * forward / seq_len


def ppl(model: PreTrainedModel, batches: list) -> float:
    return evaluate_lm(model, batches)["perplexity"]


def run_seed(args: argparse.Namespace, seed: int, top_k: int, methods) -> dict:
    """Every method of ``methods`` for one seed; returns name -> held-out perplexity (+ extras)."""
    split = knowledge_split(args.clients, seed=seed)
    # the front door's builder: untrained large model, untrained small shapes and a
    # tokenizer trained on the server's own texts
    run_config = RunConfig(mode="koala", student=args.smalls, seed=seed)
    large0, smalls0, tokenizer = koala_models(run_config, split)

    def encode(texts: list[str]) -> Examples:
        return encode_documents(texts, tokenizer, args.seq_len)

    clients = [encode(texts) for texts in split.clients]
    prompts = prompt_ids(split.proxy_prompts, tokenizer)
    proxy = concat_examples(
        [encode(split.proxy_text), prompt_rows(prompts, args.seq_len, PAD_ID)]
    )
    held_out = list(iterate_batches(encode(split.held_out), args.batch_size))[
        : args.eval_batches
    ]
    sequence = SequenceKD(
        prompts,
        args.prompts or 1,
        args.max_new_tokens,
        args.seq_len,
        args.batch_size,
        EOS_ID,
        PAD_ID,
    )
    loss = unlabelled_kd_loss(args.temperature)
    seq_steps = -(-args.prompts * len(smalls0) // args.batch_size)
    large_steps = args.batches + seq_steps  # per round, KOALA's heterogeneous server
    result: dict = {}
    trajectory: list[dict] = []

    def client_batches(examples: Examples, i: int, r: int) -> list:
        return epoch_batches(
            examples, args.batch_size, 1, args.batches, seed * 7919 + 100 * r + i
        )

    def koala(num_archs: int) -> tuple[PreTrainedModel, list[float]]:
        """KOALA with ``num_archs`` small architectures; per-round figures into ``trajectory``."""
        trajectory.clear()
        large, smalls = copy.deepcopy(large0), copy.deepcopy(smalls0[:num_archs])
        for r in range(args.rounds):
            updates: list[list] = [[] for _ in smalls]
            for i in range(args.clients):
                local = copy.deepcopy(smalls[i % num_archs])
                figures = train_ce(
                    local, client_batches(clients[i], i, r), args.small_lr
                )
                updates[i % num_archs].append(
                    (state_of(local), figures["num-examples"])
                )
            metrics = server_transfer(
                large,
                smalls,
                updates,
                epoch_batches(proxy, args.batch_size, 1, args.batches, seed * 7919 + r),
                loss,
                args.large_lr,
                args.small_lr,
                top_k=top_k,
                sequence=sequence if args.prompts else None,
                seed=seed * 7919 + r,
            )
            row = {
                "round": r + 1,
                "large": ppl(large, held_out),
                "smalls": [ppl(s, held_out) for s in smalls],
                "max_answer_weight": metrics.get("seq-kd-max-weight", 1.0),
            }
            trajectory.append(row)
            if args.verbose:
                print(f"  [{num_archs} arch] {row}")
        return large, [ppl(s, held_out) for s in smalls]

    for name in methods:
        started = time.process_time()
        smalls_ppl: list[float] = []
        extra: dict = {}
        if name == "untrained":
            model = large0
        elif name == "proxy-only":
            model = copy.deepcopy(large0)
            for r in range(args.rounds):
                batches = epoch_batches(
                    proxy, args.batch_size, 1, large_steps, seed * 7919 + r
                )
                train_ce(model, batches, args.large_lr)
                # an oracle early stop (it peeks at the held-out set): proxy-only at its best
                extra["best_round_perplexity"] = min(
                    extra.get("best_round_perplexity", float("inf")),
                    ppl(model, held_out),
                )
        elif name == "koala-homogeneous":
            model, smalls_ppl = koala(1)
            extra["rounds"] = list(trajectory)
        elif name == "koala-heterogeneous":
            model, smalls_ppl = koala(len(smalls0))
            extra["rounds"] = list(trajectory)
        elif name == "fedavg-large":
            model = copy.deepcopy(large0)
            for r in range(args.rounds):
                states, counts = [], []
                for i in range(args.clients):
                    local = copy.deepcopy(model)
                    figures = train_ce(
                        local, client_batches(clients[i], i, r), args.large_lr
                    )
                    states.append(state_of(local))
                    counts.append(figures["num-examples"])
                model.load_state_dict(fedavg(states, counts))
        elif name == "centralized":
            model, everything = (
                copy.deepcopy(large0),
                concat_examples([*clients, proxy]),
            )
            steps = args.clients * args.batches + large_steps
            for r in range(args.rounds):
                batches = epoch_batches(
                    everything, args.batch_size, 1, steps, seed * 7919 + r
                )
                train_ce(model, batches, args.large_lr)
        result[name] = {
            "perplexity": ppl(model, held_out),
            "cpu_s": time.process_time() - started,
            **({"small_perplexity": smalls_ppl} if smalls_ppl else {}),
            **extra,
        }
        print(
            f"  seed {seed} {name:<20} ppl {result[name]['perplexity']:8.2f}  "
            f"cpu {result[name]['cpu_s']:6.1f} s"
            + (f"  smalls {[round(p, 2) for p in smalls_ppl]}" if smalls_ppl else "")
        )
    result["_sizes"] = {
        "large_params": count_parameters(large0),
        "small_params": [count_parameters(s) for s in smalls0],
        "large_config": large0.config.to_dict(),
        "small_configs": [s.config.to_dict() for s in smalls0],
        "client_tokens_per_round": [
            float(sum(int(b["attention_mask"].sum()) for b in client_batches(c, i, 0)))
            for i, c in enumerate(clients)
        ],
        "proxy_tokens_per_round": float(
            sum(
                int(b["attention_mask"].sum())
                for b in epoch_batches(proxy, args.batch_size, 1, args.batches, 0)
            )
        ),
        "vocab": len(tokenizer),
    }
    return result


def spread(values: list[float]) -> dict:
    return {
        "per_seed": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def costs(sizes: dict, seq_len: int, rounds: int) -> dict:
    """Per-client storage, training FLOPs and upload bytes per round: KOALA vs FedAvg-large."""
    large_params = sizes["large_params"]
    tokens = statistics.fmean(sizes["client_tokens_per_round"])
    large_flops = train_flops_per_token(sizes["large_config"], seq_len) * tokens
    rows = []
    for k, (params, config) in enumerate(
        zip(sizes["small_params"], sizes["small_configs"])
    ):
        flops = train_flops_per_token(config, seq_len) * tokens
        rows.append(
            {
                "small": k,
                "params": params,
                "ratio": large_params / params,
                "storage_saved": 1 - params / large_params,
                "flops_saved": 1 - flops / large_flops,
                "small_gflop_per_round": flops / 1e9,
            }
        )
    vocab, proxy_tokens = sizes["vocab"], sizes["proxy_tokens_per_round"]
    uploads = {
        "fedavg-large weights": 4 * large_params,
        **{
            f"koala small-{k} weights": 4 * p
            for k, p in enumerate(sizes["small_params"])
        },
        **{
            f"log-probs on the proxy, top-{k or 'all'}": upload_bytes_per_token(
                k, vocab
            )
            * proxy_tokens
            for k in (0, 64, 8, 1)
        },
    }
    return {
        "large_params": large_params,
        "large_gflop_per_round": large_flops / 1e9,
        "smalls": rows,
        "upload_bytes_per_client_round": uploads,
        "paper": {"storage_saved": PAPER_STORAGE, "flops_saved": PAPER_FLOPS},
    }


def koala_gaps(table: dict) -> dict:
    """Per KOALA mode: the worst-seed margin over proxy-only (> 0: better on every seed)
    and the mean perplexity gaps to fedavg-large and centralized (> 0: KOALA worse)."""
    gaps = {}
    for m in ("koala-homogeneous", "koala-heterogeneous"):
        if m not in table or "proxy-only" not in table:
            continue
        gaps[m] = {
            "margin_over_proxy_only_worst_seed": table["proxy-only"]["min"]
            - table[m]["max"],
            "margin_over_proxy_only_mean": table["proxy-only"]["mean"]
            - table[m]["mean"],
            **{
                f"gap_to_{ref.replace('-', '_')}": table[m]["mean"] - table[ref]["mean"]
                for ref in ("fedavg-large", "centralized")
                if ref in table
            },
        }
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--batches",
        type=int,
        default=8,
        help="mini-batches per client (and proxy) per round",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument(
        "--smalls",
        default="16x2x2,24x1x2",
        help="small shapes: hidden x layers x heads, comma-separated",
    )
    parser.add_argument(
        "--prompts",
        type=int,
        default=64,
        help="proxy prompts answered per round (0: no sequence KD)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--top-k",
        type=int,
        default=0,
        help="top-k uploads of token-level soft labels (0: full)",
    )
    parser.add_argument(
        "--k-sweep",
        default="",
        help="comma-separated k: koala-heterogeneous on the first seed per k",
    )
    parser.add_argument("--small-lr", type=float, default=1e-2)
    parser.add_argument("--large-lr", type=float, default=3e-3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--eval-batches", type=int, default=8, help="held-out mini-batches evaluated"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output", type=Path, default=Path("outputs/koala-experiment"))
    parser.add_argument(
        "--verbose", action="store_true", help="per-round perplexities of KOALA"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.process_time()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    per_seed = {seed: run_seed(args, seed, args.top_k, methods) for seed in seeds}
    table = {
        m: {
            **spread([per_seed[s][m]["perplexity"] for s in seeds]),
            "cpu_s_per_seed": statistics.fmean(per_seed[s][m]["cpu_s"] for s in seeds),
        }
        for m in methods
    }
    if "proxy-only" in methods:
        table["proxy-only"]["best_round"] = spread(
            [per_seed[s]["proxy-only"]["best_round_perplexity"] for s in seeds]
        )
    k_sweep = {}
    for k in [int(x) for x in args.k_sweep.split(",") if x]:
        run = run_seed(args, seeds[0], k, ["koala-heterogeneous"])
        k_sweep[str(k)] = run["koala-heterogeneous"]["perplexity"]
    sizes = per_seed[seeds[0]]["_sizes"]
    report = {
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
        "seeds": seeds,
        "methods": [{"name": m, **table[m]} for m in methods],
        "koala_rounds_seed0": {
            m: per_seed[seeds[0]][m]["rounds"]
            for m in methods
            if "rounds" in per_seed[seeds[0]][m]
        },
        "small_perplexity": {
            m: [per_seed[s][m]["small_perplexity"] for s in seeds]
            for m in methods
            if "small_perplexity" in per_seed[seeds[0]][m]
        },
        "koala_gaps": koala_gaps(table),
        "top_k_sweep_seed0_koala_heterogeneous": k_sweep,
        "costs": costs(sizes, args.seq_len, args.rounds),
        "cpu_s_total": time.process_time() - started,
    }
    print(
        f"\nheld-out perplexity on client-topic text, {len(seeds)} seeds ({args.rounds} rounds, {args.clients} clients)"
    )
    print(f"{'method':<22}{'mean':>9}{'std':>8}{'min':>9}{'max':>9}  per seed")
    for m in methods:
        t = table[m]
        print(
            f"{m:<22}{t['mean']:>9.2f}{t['std']:>8.2f}{t['min']:>9.2f}{t['max']:>9.2f}  "
            + " ".join(f"{v:.2f}" for v in t["per_seed"])
        )
    for m, gap in report["koala_gaps"].items():
        print(
            f"{m}: worst-seed margin over proxy-only {gap['margin_over_proxy_only_worst_seed']:+.2f} ppl "
            f"({'beats it on every seed' if gap['margin_over_proxy_only_worst_seed'] > 0 else 'does NOT beat it on every seed'})"
            + "".join(
                f"; mean gap to {ref} {gap[key]:+.2f}"
                for ref, key in (
                    ("fedavg-large", "gap_to_fedavg_large"),
                    ("centralized", "gap_to_centralized"),
                )
                if key in gap
            )
        )
    if "proxy-only" in table:
        best = table["proxy-only"]["best_round"]
        print(
            f"proxy-only at its best round (oracle early stop): mean {best['mean']:.2f}, "
            f"per seed {' '.join(f'{v:.2f}' for v in best['per_seed'])}"
        )
    for k, v in k_sweep.items():
        print(f"top-{k} uploads, koala-heterogeneous, seed {seeds[0]}: ppl {v:.2f}")
    c = report["costs"]
    print(
        f"\nper client: large model {c['large_params']:,} params, {c['large_gflop_per_round']:.3f} GFLOP/round"
    )
    for row in c["smalls"]:
        print(
            f"  small-{row['small']}: {row['params']:,} params ({row['ratio']:.1f}x smaller): "
            f"storage saved {row['storage_saved']:.1%} (paper {PAPER_STORAGE}), "
            f"FLOPs saved {row['flops_saved']:.1%} (paper {PAPER_FLOPS})"
        )
    for name, size in c["upload_bytes_per_client_round"].items():
        print(f"  upload per round, {name}: {size / 1e6:.3f} MB")
    print(f"total CPU time {report['cpu_s_total']:.0f} s")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "koala_results.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
