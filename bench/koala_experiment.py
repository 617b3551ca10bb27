"""KOALA vs its two baselines on the built-in corpus: held-out perplexity, client storage and FLOPs.

In one process, without Flower, with the very functions the KOALA strategy and its ClientApp
handler call (`splitkd_flwr.koala.transfer`). All three start from the same randomly
initialised large model (the default teacher's architecture) and run the same rounds:

- proxy-only (lower bound): the large model trained with CE on the server's proxy data,
  as many steps per round as KOALA's reverse KD takes;
- FedAvg-large (upper bound): every client trains the large model itself on its private
  partition, the server averages them (as if clients could run it);
- KOALA: clients train small models (two architectures: heterogeneous mode), the server
  distills them into the large model on the UNLABELLED proxy data and back.

Per-client storage (fp32 parameter bytes) and training FLOPs per round are those of the
small model a KOALA client trains against those of training the large one locally
(`simulation.cost.ModelShape`: 3 x forward FLOPs), for the tiny models trained here and,
modelled only, for a Llama-3.2-1B client of a Llama-3.1-8B server::

    .venv/bin/python bench/koala_experiment.py --rounds 8 --clients 4
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import LlamaConfig, PreTrainedModel

from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.data.loading import encode_documents, iterate_batches
from splitkd_flwr.data.partition import builtin_split
from splitkd_flwr.data.tokenizer import train_tokenizer
from splitkd_flwr.default_models.configs import default_teacher_config
from splitkd_flwr.koala.transfer import (
    count_parameters,
    epoch_batches,
    fedavg,
    server_transfer,
    state_of,
    train_ce,
    unlabelled_kd_loss,
)
from splitkd_flwr.simulation.cost import (
    LLAMA_3_1_8B,
    LLAMA_3_2_1B,
    TRAIN_FACTOR,
    ModelShape,
)
from splitkd_flwr.split.evaluate import evaluate_lm
from splitkd_flwr.split.models import load_causal_lm

PAPER = "97.2-97.6% less storage, 98.4-98.6% fewer FLOPs (MobileNetV3-Small clients, VGG19 server)"


def small_configs(large: LlamaConfig) -> list[LlamaConfig]:
    """Two small architectures of the large one's family: narrow+deep and wider+shallow."""
    shapes = [(32, 2, 2), (48, 1, 4)]  # (hidden, layers, heads)
    return [
        LlamaConfig(
            **{
                **large.to_dict(),
                "hidden_size": h,
                "num_hidden_layers": n,
                "num_attention_heads": a,
                "num_key_value_heads": a,
                "intermediate_size": 3 * h,
                "head_dim": h // a,
            }
        )
        for h, n, a in shapes
    ]


def train_flops_per_token(config: dict, seq_len: int) -> float:
    """Training FLOPs per token of a Llama-style model (forward x 3, attention included)."""
    shape = ModelShape.from_config(config)
    forward = shape.layers * shape.layer_forward_flops(
        seq_len
    ) + shape.head_forward_flops(seq_len)
    return TRAIN_FACTOR * forward / seq_len


def llama_params(config: dict) -> int:
    """Parameters of a Llama-style model (norms left out: they are negligible)."""
    shape = ModelShape.from_config(config)
    heads = 1 if config.get("tie_word_embeddings") else 2  # input embedding and LM head
    return shape.layers * shape.layer_params + heads * shape.vocab * shape.hidden


def _ppl(model: PreTrainedModel, batches: list) -> float:
    return evaluate_lm(model, batches)["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--batches",
        type=int,
        default=8,
        help="mini-batches per client (and proxy) per round",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--small-lr", type=float, default=1e-2)
    parser.add_argument("--large-lr", type=float, default=3e-3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--eval-batches", type=int, default=8, help="held-out mini-batches evaluated"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    tokenizer = train_tokenizer(d.text for d in generate_corpus())
    split = builtin_split(args.clients, seed=args.seed)

    def encode(docs: list) -> object:
        return encode_documents([d.text for d in docs], tokenizer, args.seq_len)

    proxy, clients = encode(split.server), [encode(part) for part in split.devices]
    eval_batches = list(iterate_batches(encode(split.eval), args.batch_size))[
        : args.eval_batches
    ]
    large_config = default_teacher_config(len(tokenizer))
    large0 = load_causal_lm(large_config)
    smalls0 = [load_causal_lm(c) for c in small_configs(large_config)]
    initial_ppl = _ppl(large0, eval_batches)

    def client_batches(i: int, r: int) -> list:
        return epoch_batches(
            clients[i], args.batch_size, 1, args.batches, args.seed + 100 * r + i
        )

    def proxy_batches(r: int) -> list:
        return epoch_batches(proxy, args.batch_size, 1, args.batches, args.seed + r)

    # (a) proxy-only: CE on the proxy data, as many large-model steps as KOALA's reverse KD
    started, lower = time.perf_counter(), copy.deepcopy(large0)
    for r in range(args.rounds):
        train_ce(lower, proxy_batches(r), args.large_lr)
    lower_s = time.perf_counter() - started

    # (b) FedAvg of the large model itself on the clients' private data
    started, upper = time.perf_counter(), copy.deepcopy(large0)
    for r in range(args.rounds):
        states, counts = [], []
        for i in range(args.clients):
            local = copy.deepcopy(upper)
            counts.append(
                train_ce(local, client_batches(i, r), args.large_lr)["num-examples"]
            )
            states.append(state_of(local))
        upper.load_state_dict(fedavg(states, counts))
    upper_s = time.perf_counter() - started

    # (c) KOALA, heterogeneous: client i trains architecture i % 2
    started, large, smalls = (
        time.perf_counter(),
        copy.deepcopy(large0),
        copy.deepcopy(smalls0),
    )
    loss, tokens_per_client = unlabelled_kd_loss(args.temperature), 0.0
    for r in range(args.rounds):
        updates: list[list] = [[] for _ in smalls]
        for i in range(args.clients):
            local = copy.deepcopy(smalls[i % len(smalls)])
            figures = train_ce(local, client_batches(i, r), args.small_lr)
            updates[i % len(smalls)].append((state_of(local), figures["num-examples"]))
            tokens_per_client += figures["tokens"] / args.clients
        metrics = server_transfer(
            large, smalls, updates, proxy_batches(r), loss, args.large_lr, args.small_lr
        )
        print(
            f"KOALA round {r + 1}: large ppl {_ppl(large, eval_batches):.2f}, "
            f"reverse KD {metrics['reverse-kd-loss']:.4f}"
        )
    koala_s = time.perf_counter() - started

    print(
        f"\nheld-out perplexity after {args.rounds} rounds ({args.clients} clients, "
        f"{args.batches} batches x {args.batch_size} x {args.seq_len} tokens per client per round; "
        f"initial {initial_ppl:.2f})"
    )
    print(f"{'method':<34}{'large-model ppl':>16}{'wall s':>9}")
    for name, model, wall_s in (
        ("proxy data only (lower bound)", lower, lower_s),
        ("FedAvg of the large model (upper)", upper, upper_s),
        ("KOALA, 2 small architectures", large, koala_s),
    ):
        print(f"{name:<34}{_ppl(model, eval_batches):>16.2f}{wall_s:>9.1f}")
    for k, small in enumerate(smalls):
        print(f"  KOALA small model {k} ppl: {_ppl(small, eval_batches):.2f}")

    print(
        f"\nper-client cost of KOALA vs training the large model locally (paper: {PAPER})"
    )
    print(
        f"{'client model':<42}{'params':>11}{'MB fp32':>9}{'storage':>10}{'GFLOP/round':>13}{'FLOPs':>9}"
    )
    large_bytes = 4 * count_parameters(large0)
    large_flops = (
        train_flops_per_token(large0.config.to_dict(), args.seq_len)
        * tokens_per_client
        / args.rounds
    )
    print(
        f"{'large model (trained locally)':<42}{count_parameters(large0):>11,}{large_bytes / 1e6:>9.2f}"
        f"{'':>10}{large_flops / 1e9:>13.3f}"
    )
    for k, small in enumerate(smalls0):
        size = 4 * count_parameters(small)
        flops = (
            train_flops_per_token(small.config.to_dict(), args.seq_len)
            * tokens_per_client
            / args.rounds
        )
        print(
            f"{f'KOALA small {k} (hidden {small.config.hidden_size}, {small.config.num_hidden_layers} layers)':<42}"
            f"{count_parameters(small):>11,}{size / 1e6:>9.2f}{1 - size / large_bytes:>10.1%}"
            f"{flops / 1e9:>13.3f}{1 - flops / large_flops:>9.1%}"
        )
    params = [llama_params(LLAMA_3_2_1B), llama_params(LLAMA_3_1_8B)]
    ratio_flops = train_flops_per_token(LLAMA_3_2_1B, 512) / train_flops_per_token(
        LLAMA_3_1_8B, 512
    )
    print(
        f"{'modelled: Llama-3.2-1B client, 8B server':<42}{params[0]:>11,}{4 * params[0] / 1e6:>9.0f}"
        f"{1 - params[0] / params[1]:>10.1%}{'':>13}{1 - ratio_flops:>9.1%}"
    )


if __name__ == "__main__":
    main()
