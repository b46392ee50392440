"""The step plan: what one optimizer step runs fused, what falls back, and how.

An optimizer step goes in two stages (docs/design.md, "Plan, then execute"):

1. ``build_plan`` turns a description of the step's ``(gradient, variable)``
   pairs (``Pair``, one per pair, made by the backend's executor) and the
   step's options into an immutable ``StepPlan``: the fused groups (one per
   dtype, device and weight decay), the pairs that take the stock update and
   why, the clip folded into the fused kernels, and how a non-finite step is
   skipped.
2. The backend's executor (``fusedopt/backends/<framework>/executor.py``)
   runs the plan through ``run_plan``: one fused kernel call per group, the
   stock update for the rest.

Nothing here imports a framework: a plan is plain data, the same for every
Keras backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FUSED = "fused"

# How a step with a non-finite gradient is skipped (skip_nonfinite=True).
GATE_NONE = "none"  # not at all, or by the caller around the whole step
GATE_CHECK = "check"  # an all-finite check of the gradients feeds the kernels' apply_if
GATE_NORM = "norm"  # the folded global norm is the check (its pass reads every gradient)


@dataclass(frozen=True)
class Pair:
    """What the planner needs to know of one (gradient, variable) pair.

    fallback: why this pair cannot take the fused kernel (a sparse gradient,
    a dtype or device the kernels do not take, ...), or None.
    decayed: whether the optimizer's weight decay applies to the variable.
    """

    path: str
    dtype: str
    device: str
    decayed: bool
    fallback: str | None = None


@dataclass(frozen=True)
class FoldedClip:
    """A built-in clip applied inside the fused kernels instead of as stock ops.

    transformer: the fusedopt.transformers built-in (ClipByValue, ClipByNorm,
    ClipByGlobalNorm) whose thresholds the executor reads for this step.
    source: "keras" (the optimizer's clipvalue / clipnorm / global_clipnorm)
    or "transformer" (the last of gradient_transformers).
    """

    transformer: object
    source: str

    @property
    def kind(self) -> str:
        return self.transformer.kind


@dataclass(frozen=True)
class Group:
    """Pairs updated by one fused kernel call: same dtype, device, decay."""

    dtype: str
    device: str
    decayed: bool
    members: tuple  # indices into the step's pairs, in step order


@dataclass(frozen=True)
class StepPlan:
    """One step, decided: see the module docstring.

    fallback: indices of the pairs that take the stock update, in step order.
    reasons: per pair, FUSED or "fallback: <why>".
    clip: the clip folded into the fused groups (the executor clips the
      fallback pairs' gradients the same way), or None.
    gate: GATE_NONE, GATE_CHECK or GATE_NORM.
    """

    groups: tuple
    fallback: tuple
    reasons: tuple
    paths: tuple
    clip: FoldedClip | None = None
    gate: str = GATE_NONE
    decayed: frozenset = field(default_factory=frozenset)

    @property
    def fused_paths(self) -> dict:
        """Variable path -> "fused" or "fallback: <why>"."""
        return dict(zip(self.paths, self.reasons))


def build_plan(pairs, *, step_fallback: str | None = None, clip: FoldedClip | None = None,
               gate: str = GATE_NONE) -> StepPlan:
    """The plan of one step.

    pairs: a Pair per (gradient, variable), in step order.
    step_fallback: why no pair of this step can be fused (the op library is
      missing, an unsupported option or context), or None.
    clip: the clip the kernels apply (see `fold_clip`), or None.
    gate: how a non-finite step is skipped (see `step_gate`).
    """
    groups, fallback, reasons = {}, [], []
    for i, pair in enumerate(pairs):
        why = step_fallback or pair.fallback
        if why:
            fallback.append(i)
            reasons.append("fallback: " + why)
        else:
            groups.setdefault((pair.dtype, pair.device, pair.decayed), []).append(i)
            reasons.append(FUSED)
    return StepPlan(
        groups=tuple(Group(dtype, device, decayed, tuple(members))
                     for (dtype, device, decayed), members in groups.items()),
        fallback=tuple(fallback),
        reasons=tuple(reasons),
        paths=tuple(p.path for p in pairs),
        clip=clip,
        gate=gate,
        decayed=frozenset(i for i, p in enumerate(pairs) if p.decayed),
    )


def fold_clip(keras_clip, transformers, *, can_fold: bool) -> FoldedClip | None:
    """The clip the fused kernels apply this step, or None.

    keras_clip: the optimizer's clipvalue / clipnorm / global_clipnorm as the
      equivalent built-in transformer, or None.
    transformers: the optimizer's gradient_transformers, in order.
    can_fold: whether the executor can fold a clip in this context (it
      cannot inside an XLA cluster without the kernels, or where Keras clips
      each replica's gradients before the all-reduce).

    Only a clip with nothing between it and the update folds: Keras' clip
    when there are no transformers, else the last transformer if it is a
    built-in clip.
    """
    if not can_fold:
        return None
    if transformers:
        last = transformers[-1]
        if getattr(last, "foldable", False):
            return FoldedClip(last, "transformer")
        return None
    if keras_clip is not None:
        return FoldedClip(keras_clip, "keras")
    return None


def step_gate(*, skip_nonfinite: bool, gated_by_inputs: bool, clip: FoldedClip | None,
              clip_sees_apply_grads: bool) -> str:
    """How this step skips itself when a gradient is not finite.

    gated_by_inputs: every write of the step is a fused kernel (or a fallback
      update the executor can put under the same predicate); otherwise the
      caller runs the whole step in a conditional and the plan does nothing.
    clip_sees_apply_grads: the folded clip gets the gradients apply() got
      (no loss-scale division, no transformer before it), so that its norm is
      finite exactly when they all are (or the norm overflows, when the
      clipped step would be NaN everywhere).
    """
    if not (skip_nonfinite and gated_by_inputs):
        return GATE_NONE
    if clip is not None and clip.kind == "global_norm" and clip_sees_apply_grads:
        return GATE_NORM
    return GATE_CHECK


def fold_planned_clip(plan: StepPlan, optimizer, groups, fallback, finite, fold):
    """The plan's folded clip, if any, computed by the backend's
    ``fold(kernel_clip, groups, fallback, optimizer, transformer) ->
    (clip_args per group, fallback, norm_finite)``.

    Returns ``(clip_args, fallback, finite)``: the kernels' clip arguments per
    group (empty without a clip), the fallback pairs (the backend may clip
    them with the same factor), and the step's predicate: under GATE_NORM the
    norm's own finite flag, since its pass read every gradient of the step (it
    is not finite if any element is not, or if it overflows, when the clipped
    step would write NaN everywhere); no second pass.
    """
    if plan.clip is None:
        return {}, fallback, finite
    transformer = plan.clip.transformer
    clip_args, fallback, norm_finite = fold(transformer.kernel_clip(optimizer.iterations), groups,
                                            fallback, optimizer, transformer)
    if plan.gate == GATE_NORM:
        finite = norm_finite
    return clip_args, fallback, finite


NO_CLIP = ("none", None)  # the kernels' clip arguments of a group without a folded clip


def run_plan(plan: StepPlan, optimizer, grads_and_vars, finite, *, prepare, fold, call_group,
             stock_update):
    """Runs `plan` with a backend's pieces; the skeleton every executor shares.

    grads_and_vars: the step's (gradient, variable) pairs, in step order.
    finite: the skip predicate (GATE_CHECK), or None.
    prepare(grad, var) -> (grad, var): a fused pair as its kernel takes it
      (the gradient cast to the variable's dtype, made contiguous, ...).
    fold: the backend's clip folding (see `fold_planned_clip`).
    call_group(group, pairs, clip_args, finite): one fused kernel call over
      a group's prepared pairs.
    stock_update(fallback, finite): the stock update of the fallback pairs,
      ``[(index, (grad, var)), ...]`` in step order, under the predicate
      when it is not None.

    The fused groups run first, in plan order, then the fallback pairs.
    Returns the step's predicate (under GATE_NORM the folded norm's).
    """
    groups = {group: [prepare(*grads_and_vars[i]) for i in group.members]
              for group in plan.groups}
    fallback = [(i, grads_and_vars[i]) for i in plan.fallback]
    clip_args, fallback, finite = fold_planned_clip(plan, optimizer, groups, fallback, finite,
                                                    fold)
    for group, pairs in groups.items():
        call_group(group, pairs, clip_args.get(group, NO_CLIP), finite)
    if fallback:
        stock_update(fallback, finite)
    return finite
