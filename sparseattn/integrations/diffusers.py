"""Sparse self-attention inside diffusers video pipelines: Wan 2.1 and HunyuanVideo.

::

    import sparseattn
    with sparseattn.apply(pipe, "svg2") as patch:        # or apply(pipe.transformer, "svg2", scheduler=pipe.scheduler)
        video = pipe(prompt, num_inference_steps=50).frames[0]
    print(patch.density_table())                        # {(layer, step): density} of that generation

What `apply` installs, and why:

- Attention processors: subclasses of the stock processors (``WanAttnProcessor`` on Wan's video self-attention
  ``attn1``; ``HunyuanVideoAttnProcessor2_0`` on the joint attention of HunyuanVideo's dual- and single-stream blocks),
  set with ``set_attn_processor``. They repeat the stock projections, QK-norm and RoPE, then call the strategy
  instead of ``dispatch_attention_fn`` — diffusers' backend enum is closed, so a processor is the supported way in.
  Cross-attention, Wan's I2V image branch and HunyuanVideo's text refiner stay dense and untouched.
- Layers the strategy's schedule keeps dense for every step keep their original processor; sparse layers run
  ``dispatch_attention_fn`` with the processor's attention backend during the dense warm-up steps. So diffusers'
  attention backends (``set_attention_backend``) stay in charge of all dense attention.
- Where the call is: the layer index is fixed per processor; the denoising step and number of steps come from the
  pipeline's scheduler (``set_timesteps`` starts a generation and resets the per-layer centroid cache, every ``step``
  advances the step) or, with a bare transformer, from the ``timestep`` argument (a larger timestep than the previous
  call starts a new generation); the latent token grid comes from the latent shape in a forward pre-hook on the
  transformer. All of it lives in the returned `StrategyPatch`, never in a global.
- HunyuanVideo's tokens are [video | text | padding]. Only the video tokens are clustered; the valid text tokens are
  one block that every token attends to and that attends to everything (the strategy's ``text_tokens``). Padded text
  positions stay masked as keys, as in the stock processor (its mask [B, 1, 1, N] masks keys only); padded queries
  attend to every valid key, exactly as there. Batch entries with different text lengths run as separate groups
  (they share the layer's centroid cache, as SVG2's conditional and unconditional passes do).
- ``torch.compile``: the strategy call is excluded from compilation (``torch.compiler.disable``): its clustering and
  block lists have data-dependent shapes. Projections, norms and RoPE still compile; use ``fullgraph=False``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

try:
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor
except ImportError as exc:  # the optional extra is missing, or a diffusers without these models
    raise ImportError(
        f"sparseattn's diffusers integration needs diffusers >= 0.42 ({exc}); install it with "
        "pip install 'sparseattn[diffusers]'"
    ) from exc

from ..context import AttentionContext, StateCache
from ..strategy import Strategy, load_strategy

Observer = Callable[[Tensor, Tensor, Tensor, AttentionContext], None]
_PATCH_ATTRIBUTE = "_sparseattn_patch"
_MISSING = object()


# ------------------------------------------------------------------------------------------------------------------
# The installed patch: where a call is, the state cache, the density log
# ------------------------------------------------------------------------------------------------------------------
class StrategyPatch:
    """A strategy installed on a diffusers video transformer by `apply`.

    Undo it with `remove()` or by leaving its ``with`` block (also on exceptions): the original processors, forward
    hooks and scheduler methods come back. Attributes: ``strategy``, ``model`` (the transformer), ``num_layers``,
    ``sparse_layers`` (layer indices whose processor was replaced), ``cache`` (the per-layer `StateCache`), ``step`` /
    ``num_steps`` (the current denoising step and the generation's number of steps), ``grid`` (the latent token grid
    of the last forward call).
    """

    def __init__(self, model: Any, strategy: Strategy, scheduler: Any = None, num_steps: Optional[int] = None,
                 observer: Optional[Observer] = None, inspector: Any = None) -> None:
        spec = _spec_of(model)
        self.model = model
        self.strategy = strategy
        self.scheduler = scheduler
        self.observer = observer
        self.inspector = inspector
        self.cache = StateCache()
        self.step = 0
        self.num_steps = num_steps
        self._given_num_steps = num_steps
        self.grid: Optional[tuple[int, int, int]] = None
        self._spec = spec
        self._layers = spec.layers(model)
        self.num_layers = len(self._layers)
        self.sparse_layers: list[int] = []
        self._densities: dict[tuple[int, int], list[Optional[Tensor]]] = {}
        self._last_timestep: Optional[float] = None
        self._mask: Optional[Tensor] = None
        self._mask_groups: list = []
        self._originals: dict[str, Any] = {}
        self._hook = None
        self._scheduler_saved: dict[str, Any] = {}
        self.active = False

    # -- installing and removing ------------------------------------------------------------------------------------
    def _install(self) -> None:
        processors = self.model.attn_processors
        names = {id(module): name for name, module in self.model.named_modules()}
        watched = self.observer is not None or self.inspector is not None
        replacements = {}
        for layer, module in enumerate(self._layers):
            key = f"{names[id(module)]}.processor"
            original = processors[key]
            if type(original) is not self._spec.original:
                raise ValueError(
                    f"layer {layer} ({key}) uses {type(original).__name__}, but sparseattn replaces only the stock "
                    f"{self._spec.original.__name__}; restore the default processors first"
                )
            if watched or not self._always_dense(layer):
                replacements[key] = self._spec.processor(self, layer, original)
        self._originals = {key: processors[key] for key in replacements}
        self.sparse_layers = [processor.layer for processor in replacements.values()]
        try:
            self.model.set_attn_processor({**processors, **replacements})
            self._hook = self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
            if self.scheduler is not None:
                self._track_scheduler()
            setattr(self.model, _PATCH_ATTRIBUTE, self)
            self.active = True
        except BaseException:
            self._restore()
            raise

    def _always_dense(self, layer: int) -> bool:
        """Whether the strategy keeps ``layer`` dense at every step: asked for a one-step generation, whose step is a
        warm-up step only when every step is."""
        one_step = AttentionContext(layer, self.num_layers, step=0, num_steps=1)
        return self.strategy.is_dense or self.strategy.schedule.is_dense(one_step)

    def remove(self) -> None:
        """Restore the original processors, hooks and scheduler methods (no-op when already removed)."""
        if self.active:
            self._restore()

    def _restore(self) -> None:
        self.active = False
        try:
            processors = self.model.attn_processors
            for key, original in self._originals.items():
                current = processors.get(key)
                if isinstance(current, _SparseProcessorMixin) and current.patch is self:
                    processors[key] = original
            self.model.set_attn_processor(processors)
        finally:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            for name, saved in self._scheduler_saved.items():
                if saved is _MISSING:
                    self.scheduler.__dict__.pop(name, None)
                else:
                    setattr(self.scheduler, name, saved)
            self._scheduler_saved = {}
            if getattr(self.model, _PATCH_ATTRIBUTE, None) is self:
                delattr(self.model, _PATCH_ATTRIBUTE)

    def __enter__(self) -> "StrategyPatch":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    # -- where a call is ------------------------------------------------------------------------------------------
    def _track_scheduler(self) -> None:
        """Wrap the scheduler's ``set_timesteps`` (a generation starts) and ``step`` (the next step begins)."""
        scheduler = self.scheduler
        set_timesteps, step = scheduler.set_timesteps, scheduler.step

        @functools.wraps(set_timesteps)  # keeps the signature: pipelines inspect it for `sigmas` / `timesteps`
        def tracked_set_timesteps(*args, **kwargs):
            result = set_timesteps(*args, **kwargs)
            self._start_generation(len(scheduler.timesteps))
            return result

        @functools.wraps(step)
        def tracked_step(*args, **kwargs):
            result = step(*args, **kwargs)
            self.step += 1
            return result

        for name, method in (("set_timesteps", tracked_set_timesteps), ("step", tracked_step)):
            self._scheduler_saved[name] = scheduler.__dict__.get(name, _MISSING)
            setattr(scheduler, name, method)

    def _start_generation(self, num_steps: Optional[int]) -> None:
        self.cache.reset()
        self._densities = {}
        self.step = 0
        self.num_steps = num_steps

    @torch.compiler.disable
    def _before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else (args[0] if args else None)
        if not isinstance(hidden, Tensor) or hidden.dim() != 5:
            raise ValueError(
                f"{type(module).__name__} expects hidden_states [batch, channels, frames, height, width], got "
                f"{None if hidden is None else tuple(getattr(hidden, 'shape', ()))}"
            )
        patch_t, patch_h, patch_w = self._spec.patch_size(module)
        frames, height, width = hidden.shape[2:]
        self.grid = (frames // patch_t, height // patch_h, width // patch_w)
        self._mask = None
        if self.scheduler is None:
            timestep = kwargs["timestep"] if "timestep" in kwargs else (args[1] if len(args) > 1 else None)
            if timestep is None:
                raise ValueError("the transformer was called without a timestep; sparseattn needs it to count steps")
            value = float(torch.as_tensor(timestep).max())
            if self._last_timestep is None or value > self._last_timestep:
                self._start_generation(self._given_num_steps)  # timesteps fall during a generation
            elif value < self._last_timestep:
                self.step += 1
            self._last_timestep = value

    def _context(self, layer: int, text_tokens: int) -> AttentionContext:
        num_steps = self.num_steps
        if num_steps is None:
            if self.strategy.schedule.dense_steps > 0:
                raise ValueError(
                    f"strategy '{self.strategy.name}' keeps the first {self.strategy.schedule.dense_steps:.0%} of the "
                    "steps dense, but the number of denoising steps is unknown: the scheduler's set_timesteps has not "
                    "run yet (call the pipeline, or pass num_steps= to apply)"
                )
            num_steps = self.step + 1
        if self.step >= num_steps:
            raise ValueError(
                f"the transformer ran at denoising step {self.step}, but the generation has {num_steps} steps; "
                "pass the pipeline's scheduler or the right num_steps to apply"
            )
        return AttentionContext(layer, self.num_layers, self.step, num_steps, self.grid, text_tokens, self.cache)

    # -- the attention call ---------------------------------------------------------------------------------------
    def _attend(self, layer: int, query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor],
                text_tokens: int, backend: Any, parallel_config: Any) -> Tensor:
        """Attention of one processor call; q, k, v and the result are [B, N, H, D] (diffusers' layout)."""
        strategy = self.strategy

        def dense() -> Tensor:
            return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False,
                                         backend=backend, parallel_config=parallel_config)

        dense_now = strategy.is_dense or strategy.schedule.is_dense(self._context(layer, 0))
        clusters = not strategy.is_dense and (not dense_now or strategy.schedule.cluster_during_dense)
        if not (clusters or self.observer is not None or self.inspector is not None):
            self._record(layer, None)
            return dense()
        if parallel_config is not None and not dense_now:
            raise ValueError("sparse attention does not support diffusers' context parallelism; disable it or use a "
                             "dense strategy")
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, N, D]
        n = q.shape[2]
        out = None if dense_now else torch.empty_like(q)
        for rows, valid_text in self._text_groups(attn_mask, q.shape[0], n, text_tokens):
            valid = n - text_tokens + valid_text
            qs, ks, vs = (t[rows][:, :, :valid] for t in (q, k, v))
            ctx = self._context(layer, valid_text)
            if self.observer is not None:
                self.observer(qs, ks, vs, ctx)
            logged = self.inspector is not None and self.inspector.wants(ctx)
            if not (clusters or logged):
                continue
            plan = strategy.plan(qs, ks, ctx)  # in a dense step this only keeps the centroids warm
            if dense_now:
                if logged:
                    self.inspector.log_call(qs, ks, vs, plan, ctx)
                continue
            part = strategy.attend(qs, ks, vs, plan)
            self._record(layer, plan.density)
            if logged:
                self.inspector.log_call(qs, ks, vs, plan, ctx, out=part)
            out[rows, :, :valid] = part
            if valid < n:  # padded text queries: every valid key, as the stock key mask gives them
                out[rows, :, valid:] = torch.nn.functional.scaled_dot_product_attention(q[rows][:, :, valid:], ks, vs)
        if dense_now:
            self._record(layer, None)
            return dense()
        return out.transpose(1, 2)

    def _text_groups(self, attn_mask: Optional[Tensor], batch: int, n: int, text_tokens: int) -> list:
        """[(rows, valid text tokens)]: batch entries grouped by their number of unpadded text tokens.

        ``rows`` is ``slice(None)`` when one group holds the whole batch. The mask is HunyuanVideo's boolean key
        mask [B, 1, 1, N] (True = attend), valid tokens first; it is the same tensor for every layer of one forward
        call, so it is read once.
        """
        if text_tokens == 0 or attn_mask is None:
            return [(slice(None), text_tokens)]
        if attn_mask is self._mask:
            return self._mask_groups
        if attn_mask.dtype != torch.bool or tuple(attn_mask.shape) != (batch, 1, 1, n):
            raise ValueError(
                f"expected HunyuanVideo's boolean key mask of shape ({batch}, 1, 1, {n}), got {attn_mask.dtype} "
                f"{tuple(attn_mask.shape)}"
            )
        keep = attn_mask.reshape(batch, n)
        valid = keep.sum(-1)
        prefix = torch.arange(n, device=keep.device) < valid[:, None]
        if not torch.equal(keep, prefix) or bool((valid < n - text_tokens).any()):
            raise ValueError("the attention mask must keep every video token and a prefix of the text tokens")
        rows_of: dict[int, list[int]] = {}
        for row, count in enumerate((valid - (n - text_tokens)).tolist()):
            rows_of.setdefault(count, []).append(row)
        self._mask_groups = [
            (slice(None) if len(rows) == batch else torch.tensor(rows, device=keep.device), count)
            for count, rows in rows_of.items()
        ]
        self._mask = attn_mask
        return self._mask_groups

    # -- what happened ---------------------------------------------------------------------------------------------
    def _record(self, layer: int, density: Optional[Tensor]) -> None:
        self._densities.setdefault((layer, self.step), []).append(None if density is None else density.detach())

    def density_table(self) -> dict[tuple[int, int], float]:
        """{(layer, step): density} of the current (or last) generation, for the layers in ``sparse_layers``.

        Density is the fraction of (query, key) pairs computed, averaged over batch entries, heads and the calls of
        the step (conditional and unconditional); 1.0 for dense warm-up steps. Layers outside ``sparse_layers``
        kept their original, dense processor.
        """
        table = {}
        for where, entries in sorted(self._densities.items()):
            values = [torch.ones(1) if d is None else d.float().flatten().cpu() for d in entries]
            table[where] = float(torch.cat(values).mean())
        return table


# ------------------------------------------------------------------------------------------------------------------
# Processors
# ------------------------------------------------------------------------------------------------------------------
class _SparseProcessorMixin:
    """What both sparse processors share: the patch they report to, their layer, and the original's backend."""

    def _bind(self, patch: StrategyPatch, layer: int, original: Any) -> None:
        self.patch = patch
        self.layer = layer
        self._attention_backend = original._attention_backend
        self._parallel_config = original._parallel_config

    @torch.compiler.disable  # clustering and block lists have data-dependent shapes: run eagerly, even when compiled
    def _attention(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor],
                   text_tokens: int) -> Tensor:
        out = self.patch._attend(self.layer, query, key, value, attn_mask, text_tokens, self._attention_backend,
                                 self._parallel_config)
        # One memory layout whichever path and backend ran (the caller's flatten copies a strided result anyway), so
        # torch.compile does not recompile the code after this call when dense steps turn sparse.
        return out.contiguous()


def _wan_rotary(x: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """Wan's RoPE: interleaved (even, odd) channel pairs rotated by the angles of ``freqs_cos``/``freqs_sin``."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)


class SparseWanAttnProcessor(_SparseProcessorMixin, WanAttnProcessor):
    """Wan's self-attention (``attn1``) with a sparse strategy; math otherwise identical to ``WanAttnProcessor``."""

    def __init__(self, patch: StrategyPatch, layer: int, original: WanAttnProcessor) -> None:
        super().__init__()
        self._bind(patch, layer, original)

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None,
                 rotary_emb: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or attn.add_k_proj is not None:
            raise ValueError("SparseWanAttnProcessor serves Wan's video self-attention (attn1) only, without a mask")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _wan_rotary(query, *rotary_emb), _wan_rotary(key, *rotary_emb)
        out = self._attention(query, key, value, None, 0).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class SparseHunyuanVideoAttnProcessor(_SparseProcessorMixin, HunyuanVideoAttnProcessor2_0):
    """HunyuanVideo's joint video+text attention with a sparse strategy on the video tokens; math otherwise identical
    to ``HunyuanVideoAttnProcessor2_0`` (dual-stream blocks project text separately, single-stream blocks jointly)."""

    def __init__(self, patch: StrategyPatch, layer: int, original: HunyuanVideoAttnProcessor2_0) -> None:
        super().__init__()
        self._bind(patch, layer, original)

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None,
                 image_rotary_emb: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] == 0:
            raise ValueError("SparseHunyuanVideoAttnProcessor expects text tokens (encoder_hidden_states)")
        text = encoder_hidden_states.shape[1]
        joint_projection = attn.add_q_proj is None  # single-stream blocks: video and text share the projections
        if joint_projection:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        def heads(x: Tensor) -> Tensor:
            return x.unflatten(2, (attn.heads, -1))

        query = heads(attn.to_q(hidden_states))
        key = heads(attn.to_k(hidden_states))
        value = heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:  # RoPE on the video tokens only
            if joint_projection:
                query = torch.cat([apply_rotary_emb(query[:, :-text], image_rotary_emb, sequence_dim=1),
                                   query[:, -text:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text], image_rotary_emb, sequence_dim=1),
                                 key[:, -text:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if not joint_projection:
            text_query = heads(attn.add_q_proj(encoder_hidden_states))
            text_key = heads(attn.add_k_proj(encoder_hidden_states))
            text_value = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                text_query = attn.norm_added_q(text_query)
            if attn.norm_added_k is not None:
                text_key = attn.norm_added_k(text_key)
            query = torch.cat([query, text_query], dim=1)
            key = torch.cat([key, text_key], dim=1)
            value = torch.cat([value, text_value], dim=1)

        out = self._attention(query, key, value, attention_mask, text).flatten(2, 3).to(query.dtype)
        video_out, text_out = out[:, :-text], out[:, -text:]
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return video_out, text_out


# ------------------------------------------------------------------------------------------------------------------
# Supported models
# ------------------------------------------------------------------------------------------------------------------
class _ModelSpec:
    """How to find a model's self-attention layers (in layer order), its patch size, and its processor classes."""

    def __init__(self, layers: Callable, patch_size: Callable, original: type, processor: type) -> None:
        self.layers, self.patch_size, self.original, self.processor = layers, patch_size, original, processor


SUPPORTED_MODELS: dict[type, _ModelSpec] = {
    WanTransformer3DModel: _ModelSpec(
        layers=lambda model: [block.attn1 for block in model.blocks],
        patch_size=lambda model: tuple(model.config.patch_size),
        original=WanAttnProcessor,
        processor=SparseWanAttnProcessor,
    ),
    HunyuanVideoTransformer3DModel: _ModelSpec(
        layers=lambda model: [block.attn for block in model.transformer_blocks]
        + [block.attn for block in model.single_transformer_blocks],
        patch_size=lambda model: (model.config.patch_size_t, model.config.patch_size, model.config.patch_size),
        original=HunyuanVideoAttnProcessor2_0,
        processor=SparseHunyuanVideoAttnProcessor,
    ),
}


def _spec_of(model: Any) -> _ModelSpec:
    for cls, spec in SUPPORTED_MODELS.items():
        if isinstance(model, cls):
            return spec
    names = ", ".join(cls.__name__ for cls in SUPPORTED_MODELS)
    raise ValueError(
        f"sparseattn.apply does not support {type(model).__name__}; supported transformers: {names} "
        "(pass a pipeline whose .transformer is one of them, or the transformer itself)"
    )


def _resolve(target: Any) -> tuple[Any, Any]:
    """(transformer, scheduler or None) of a pipeline or a transformer, unwrapping ``torch.compile``; raises
    ValueError for an unsupported model."""
    scheduler = None
    if not isinstance(target, torch.nn.Module) and hasattr(target, "transformer"):
        if getattr(target, "transformer_2", None) is not None:
            raise ValueError("pipelines with two transformers (Wan 2.2 A14B) are not supported; apply to a Wan 2.1 or "
                             "HunyuanVideo pipeline")
        target, scheduler = target.transformer, getattr(target, "scheduler", None)
    model = getattr(target, "_orig_mod", target)
    _spec_of(model)
    return model, scheduler


# ------------------------------------------------------------------------------------------------------------------
def apply(target: Any, strategy: Union[str, dict, Strategy], *, scheduler: Any = None,
          num_steps: Optional[int] = None, observer: Optional[Observer] = None, inspector: Any = None) -> StrategyPatch:
    """Install ``strategy`` (a built-in name, YAML path, recipe dict or `Strategy`) on a diffusers video transformer.

    ``target``: a pipeline (its transformer and scheduler are used) or a transformer (``WanTransformer3DModel`` or
    ``HunyuanVideoTransformer3DModel``, possibly wrapped by ``torch.compile``). ``scheduler``: the pipeline's
    scheduler when ``target`` is a transformer, so steps are counted from it. Without a scheduler, steps are counted
    from the ``timestep`` argument, and a strategy with dense warm-up steps needs ``num_steps``.
    ``observer(q, k, v, ctx)`` sees the self-attention inputs [B, H, N, D] (post norm and RoPE, padded text removed)
    of every call; ``inspector`` (a `sparseattn.inspect.Inspector`) logs the calls its selection picks.

    Returns the `StrategyPatch`; use it as a context manager (``with apply(pipe, "svg2"):``) or call
    ``remove(...)``. Raises ValueError for unsupported models, custom processors, or a model already patched.
    """
    model, found_scheduler = _resolve(target)
    scheduler = scheduler if scheduler is not None else found_scheduler
    strategy = load_strategy(strategy)
    if num_steps is not None and num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if scheduler is None and num_steps is None and strategy.schedule.dense_steps > 0:
        raise ValueError(
            f"strategy '{strategy.name}' keeps the first {strategy.schedule.dense_steps:.0%} of the denoising steps "
            "dense, which needs the number of steps: pass the pipeline (apply(pipe, ...)), or "
            "scheduler=pipe.scheduler, or num_steps=N"
        )
    existing = getattr(model, _PATCH_ATTRIBUTE, None)
    if existing is not None:
        raise ValueError(f"strategy '{existing.strategy.name}' is already applied to this model; remove it first "
                         "(sparseattn.remove(model))")
    patch = StrategyPatch(model, strategy, scheduler, num_steps, observer, inspector)
    patch._install()
    return patch


def remove(target: Any) -> None:
    """Undo `apply`: ``target`` is the returned `StrategyPatch`, or the pipeline / transformer it was applied to."""
    if isinstance(target, StrategyPatch):
        target.remove()
        return
    model, _ = _resolve(target)
    patch = getattr(model, _PATCH_ATTRIBUTE, None)
    if patch is None:
        raise ValueError(f"no sparseattn strategy is applied to this {type(model).__name__}")
    patch.remove()
