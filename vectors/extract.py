"""Turn contrastive pairs into a `SteeringVector`.

For each batch of pairs, positives and negatives run in one padded forward
pass (either padding side; explicit ``position_ids`` keep absolute-position
models exact under left padding). Hooks reduce each layer's hidden states to
one vector per text on the fly (``last``: last non-pad token; ``mean``: mean
over the completion tokens) and fold them into running sums; the forward pass
stops after the deepest requested layer.

Text of a pair: its prompt formatted as generation and serving format it, then
the completion (`vectors.text.pair_texts`); batches are laid out by `hooks.tokens`.

Reading the last token, the tokens both texts of a pair begin with (prompt,
template, common words) run once: a prefix pass fills a KV cache that both
suffixes reuse (`vectors.prefix`), which cuts the compute by the shared
fraction of the tokens.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from steering.hooks import (
    Site,
    SteeringError,
    cache_kwargs,
    capture,
    check_site,
    input_device,
    num_layers,
    read_rows,
    renamed,
    resolve_layers,
    run_until_stopped,
)

from .distributed import data_parallel, gather_samples, reduce_stats
from .methods import LayerStats, get_method
from .model_info import hidden_size, model_fingerprint, model_name
from .pairs import ContrastPair, as_pairs, dataset_sha256
from .prefix import SharedBatch, length_keys, new_cache, plan_shared
from .text import encode_texts, pair_texts
from .vector import SteeringVector

Read = Literal["last", "mean"]
"""Where extraction reads each text (the ``read`` keyword; formerly ``position``)."""
READS: tuple[str, ...] = get_args(Read)


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[ContrastPair],
    layers: Iterable[int] | int | None,
    *,
    read: Read = "last",
    site: Site = "block_output",
    batch_size: int = 16,
    needs_sketch: bool = False,
    needs_samples: bool = False,
    progress: bool | None = None,
    share_prefix: bool = True,
    distributed: bool | None = None,
    position: Read | None = None,
) -> dict[int, LayerStats]:
    """Run the pairs through the model and return running statistics per layer.

    With ``share_prefix`` (and ``read="last"``), the tokens a pair's two
    texts begin with run once per batch (see `vectors.prefix`). Under
    torch.distributed (``distributed=None`` detects it, see
    `vectors.distributed`) this process runs its share of the pairs and the
    statistics returned are those of all pairs. ``position`` is the
    deprecated name of ``read``.
    """
    position = renamed("read", read, position, "last")
    indices = resolve_layers(model, layers)
    check_site(site)
    if position not in READS:
        raise SteeringError(f"unknown read {position!r}; choose one of {', '.join(READS)}")
    if batch_size < 1:
        raise SteeringError(f"batch_size must be >= 1, got {batch_size}")
    if tokenizer.pad_token_id is None:
        raise SteeringError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    width = hidden_size(model)
    stats = {i: LayerStats(width, keep_sketch=needs_sketch, keep_samples=needs_samples) for i in indices}
    device = input_device(model)
    shard = data_parallel(device, distributed)
    texts = [pair_texts(tokenizer, p) for p in pairs]
    # Similar lengths in one batch waste less compute on padding; sums do not care about order.
    if share_prefix and position == "last":
        keys = length_keys(tokenizer, texts)
        order = sorted(range(len(texts)), key=keys.__getitem__)
    else:
        order = sorted(range(len(texts)), key=lambda k: len(texts[k][0]) + len(texts[k][1]))
    if shard is not None:  # every world-th pair of the length order: equal shares of equal lengths
        order = order[shard.rank :: shard.world]
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    disable = (not progress) if progress is not None else (True if len(batches) < 8 else None)

    current: dict[str, Any] = {}

    def fold(layer: int, hidden: Tensor) -> None:
        how = current.get("_reduce")
        if how is None:  # the prefix pass of a shared batch: nothing is read there
            return
        reduced = read_rows(hidden, how)
        if current.get("_interleaved"):
            stats[layer].update(reduced[0::2], reduced[1::2])
        else:
            half = reduced.shape[0] // 2
            stats[layer].update(reduced[:half], reduced[half:])

    with capture(model, indices, fold, site=site, stop_after_last=True):
        for batch in tqdm(batches, desc="extract", unit="batch", disable=disable):
            rows = [texts[k] for k in batch]
            all_texts = [r[0] for r in rows] + [r[1] for r in rows]
            prefixes = [r[2] for r in rows] * 2
            special = [r[3] for r in rows] * 2
            encoded = encode_texts(tokenizer, all_texts, prefixes, special, position, device)
            plan = _plan_shared(encoded, tokenizer.pad_token_id, device) if share_prefix and position == "last" else None
            if plan is not None:
                cache = new_cache(model)
                current = {}
                run_until_stopped(model, **plan.prefix, **cache_kwargs(model, cache), use_cache=True)
                cache.pair_up(2)
                current = {"_reduce": plan.read, "_interleaved": True}
                run_until_stopped(model, **plan.suffix, **cache_kwargs(model, cache), use_cache=True)
                del cache
                if device.type == "cpu":
                    _trim_heap()
                continue
            current = encoded
            inputs = {k: v for k, v in current.items() if not k.startswith("_")}
            run_until_stopped(model, **inputs, use_cache=False)
            if device.type == "cpu":
                _trim_heap()
    if shard is not None:
        reduce_stats(stats, shard)
        if needs_samples:
            gather_samples(stats, torch.as_tensor(order, dtype=torch.long))
    elif needs_samples:
        # Samples back in the pairs' own order (batches ran length-sorted), so row k is pair k.
        back = torch.as_tensor(order).argsort()
        for s in stats.values():
            s.pos_samples, s.neg_samples = [torch.cat(s.pos_samples)[back]], [torch.cat(s.neg_samples)[back]]
    return stats


_malloc_trim: Any = None


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS stays flat over many batches.

    Each batch's activations have a new shape; glibc keeps the freed blocks,
    and the fragments add up to tens of MiB over a thousand pairs. One
    ``malloc_trim`` per batch costs about a millisecond; elsewhere it does nothing.
    """
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            try:
                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


def _plan_shared(encoded: dict[str, Tensor], pad_id: int, device: torch.device) -> SharedBatch | None:
    """The shared-prefix plan for an encoded batch (positives first, then negatives)."""
    ids, mask = encoded["input_ids"].cpu(), encoded["attention_mask"].cpu().bool()
    rows = [ids[k][mask[k]].tolist() for k in range(ids.shape[0])]
    half = len(rows) // 2
    return plan_shared(rows[:half], rows[half:], pad_id, device)


@torch.no_grad()
def read_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    indices: Sequence[int],
    on_rows: Callable[[int, Tensor], None],
    *,
    read: Read = "last",
    site: Site = "block_output",
    batch_size: int = 16,
) -> None:
    """Run plain ``texts`` (tokenised with special tokens) through the model in batches.

    ``on_rows(layer, rows)`` gets each batch's ``[b, d]`` read at every layer in
    ``indices``, on that layer's device and dtype: the last token (``read="last"``)
    or the mean over all tokens (``"mean"``). One reader for corpus means and
    compare's text features, so both read a text the same way.
    """
    if read not in READS:
        raise SteeringError(f"unknown read {read!r}; choose 'last' or 'mean'")
    check_site(site)
    device = input_device(model)
    current: dict[str, Tensor] = {}

    def hook(layer: int, hidden: Tensor) -> None:
        on_rows(layer, read_rows(hidden, current["_reduce"]))

    with capture(model, indices, hook, site=site, stop_after_last=True):
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            current = encode_texts(tokenizer, chunk, [""] * len(chunk), [True] * len(chunk), read, device)
            run_until_stopped(model, **{k: v for k, v in current.items() if not k.startswith("_")}, use_cache=False)


def corpus_means(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Iterable[int] | int | None,
    *,
    read: Read = "last",
    site: Site = "block_output",
    batch_size: int = 16,
) -> dict[int, Tensor]:
    """Mean activation (float64) per layer over plain ``texts``, each read as in `collect_stats` (``last`` or ``mean``)."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise SteeringError("the corpus holds no non-empty texts")
    indices = resolve_layers(model, layers)
    sums = {i: torch.zeros(hidden_size(model), dtype=torch.float64) for i in indices}

    def add(layer: int, rows: Tensor) -> None:
        sums[layer] += rows.detach().to("cpu", torch.float64).sum(0)

    read_texts(model, tokenizer, texts, indices, add, read=read, site=site, batch_size=batch_size)
    return {i: s / len(texts) for i, s in sums.items()}


def extract(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[ContrastPair | dict[str, Any] | tuple[str, str]],
    layers: Iterable[int] | int | None = None,
    *,
    method: str = "mean_diff",
    read: Read = "last",
    site: Site = "block_output",
    batch_size: int = 16,
    progress: bool | None = None,
    corpus: Sequence[str] | None = None,
    reference: bool = False,
    distributed: bool | None = None,
    position: Read | None = None,
    options: Mapping[str, object] | None = None,
) -> SteeringVector:
    """Extract a steering vector from contrastive pairs.

    Args:
        model: a Hugging Face decoder-only model.
        tokenizer: its tokenizer (needs a pad token).
        pairs: `ContrastPair` objects (or dicts / ``(positive, negative)`` tuples).
        layers: layers to extract (``None`` = all; negative indices allowed).
        method: a name in `vectors.METHODS` (``mean_diff``, ``pca_diff``, ``probe``,
            ``mean_centred``; ``bipo`` is trained on the model instead, see `vectors.bipo`:
            ``read`` then only says where a reference mean is read, and it runs in one process).
        read: where each text is read: ``last`` (last non-pad token) or
            ``mean`` (completion tokens).
        site: hook site to read (`hooks.SITES`).
        batch_size: pairs per forward pass (two sequences each).
        progress: show a progress bar (default: on long runs in a terminal).
        corpus: generic texts whose mean activation is the negative side of
            ``method="mean_centred"`` (read as ``read`` says); refused by the other methods.
        reference: store the reference mean with the vector (the negatives'
            mean, or the corpus mean), for the affine modes of `steering.steer`;
            always stored with a corpus.
        distributed: split the pairs over the torch.distributed processes
            (``None``: when torchrun / accelerate launched this one, see
            `vectors.distributed`); every process returns the whole vector.
            ``False``: this process extracts every pair itself.
        position: deprecated name of ``read`` (warns).
        options: a trained method's settings by name (``bipo``: the fields of
            `vectors.bipo.BipoOptions`), recorded in the file; refused by the other methods.

    Returns:
        A `SteeringVector` with one direction per layer and its metadata.

    Example:
        >>> vec = extract(model, tok, load_pairs("sentiment"), layers=[12])  # doctest: +SKIP
    """
    read = renamed("read", read, position, "last")
    chosen = get_method(method)
    if chosen.needs_corpus != (corpus is not None):
        raise SteeringError(
            f"method {method!r} needs a generic corpus: pass corpus=texts"
            if chosen.needs_corpus
            else f"corpus= is for method='mean_centred'; method {method!r} reads the pairs' negatives"
        )
    if options and chosen.fit is None:
        raise SteeringError(f"options= are a trained method's settings; method {method!r} reads activations and takes none")
    pair_list = as_pairs(pairs)
    extra: dict[str, str] = {}
    if chosen.fit is not None and data_parallel(input_device(model), distributed) is not None:
        raise SteeringError(f"method {method!r} trains in one process; it does not split the pairs over torch.distributed processes")
    stats: dict[int, LayerStats] = {}
    if chosen.fit is None or reference:  # a trained method reads activations only for the reference mean
        stats = collect_stats(
            model,
            tokenizer,
            pair_list,
            layers,
            read=read,
            site=site,
            batch_size=batch_size,
            needs_sketch=chosen.needs_sketch,
            needs_samples=chosen.needs_samples,
            progress=progress,
            distributed=distributed,
        )
    if corpus is not None:
        means = corpus_means(model, tokenizer, corpus, list(stats), read=read, site=site, batch_size=batch_size)
        for layer, s in stats.items():
            s.corpus_mean = means[layer]
    if chosen.fit is not None:
        directions, extra = chosen.fit(
            model, tokenizer, pair_list, resolve_layers(model, layers), site=site, progress=progress, options=options
        )
    else:
        directions = {i: chosen.fn(s) for i, s in stats.items()}
    for layer, direction in directions.items():
        if not bool(torch.isfinite(direction).all()):
            raise SteeringError(f"method {method!r} gave a non-finite direction at layer {layer}")
    return SteeringVector(
        directions,
        hidden_size=hidden_size(model),
        num_layers=num_layers(model),
        model=model_name(model),
        model_fingerprint=model_fingerprint(model),
        site=site,
        method=method,
        read=read,
        n_pairs=len(pair_list),
        dataset_sha256=dataset_sha256(pair_list),
        extra=extra,
        reference={i: s.reference.float() for i, s in stats.items()} if reference or corpus is not None else None,
    )
