"""Turn an arbitrary nn.Module into an equivalent nn.Sequential of cut-able pieces with torch.fx.

The traced graph is cut before every submodule call, except where a cut is illegal: a value
crossing it is not a Tensor (a Python number, a tuple returned by a submodule, None), or a
parameter is used on both sides (it would be duplicated across pipeline stages). Values that
skip over a cut are carried along: a piece receives and returns a tuple of every live Tensor.
Each piece runs the original graph's nodes in the original order, so outputs and gradients are
bit-identical to the module's.
"""

from __future__ import annotations

import copy
import inspect
import linecache
import operator
import traceback
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, fx, nn

from funcpipe.errors import ConfigError

_assert_is_none = getattr(fx._symbolic_trace, "_assert_is_none", None)  # fx's guard for None


def to_sequential(module: nn.Module, example_input: Tensor | tuple[Tensor, ...]) -> nn.Sequential:
    """Return an nn.Sequential equal to `module` on inputs like `example_input`.

    `example_input` (a Tensor, or a tuple for several positional inputs) decides which values
    are Tensors; forward() parameters after those take their default values. The module is
    copied, so the result trains independently of it. Raises ConfigError naming the construct
    (and its source line) when torch.fx cannot trace the module, e.g. data-dependent control flow.
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise ConfigError("example_input must be a Tensor or a non-empty tuple of Tensors")
    module = copy.deepcopy(module)
    graph_module = _trace(module, len(inputs))
    values = _run(graph_module, inputs)
    nodes = [n for n in graph_module.graph.nodes if n.op not in ("placeholder", "output")]
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    output = next(n for n in graph_module.graph.nodes if n.op == "output")
    order = {n: i for i, n in enumerate(nodes)}
    order.update({p: -1 for p in placeholders})
    last_use = {
        n: max((order.get(u, len(nodes)) for u in n.users), default=-1)
        for n in [*placeholders, *nodes]
    }
    starts = _legal_cuts(graph_module, nodes, order, last_use, values)
    pieces = []
    carried: list[fx.Node] = placeholders
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(nodes)
        live_out = None if end == len(nodes) else _live_at(end, nodes, placeholders, last_use)
        pieces.append(_piece(graph_module, carried, nodes[start:end], live_out, output))
        carried = live_out or []
    return nn.Sequential(*pieces)


def _trace(module: nn.Module, n_inputs: int) -> fx.GraphModule:
    params = list(inspect.signature(module.forward).parameters.values())
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if len(positional) < n_inputs:
        raise ConfigError(
            f"{type(module).__name__}.forward takes {len(positional)} inputs but example_input "
            f"has {n_inputs}"
        )
    concrete = {}
    for p in positional[n_inputs:]:
        if p.default is p.empty:
            raise ConfigError(
                f"{type(module).__name__}.forward parameter {p.name!r} has no default; pass it "
                f"in example_input (a tuple of Tensors) or give it a default"
            )
        concrete[p.name] = p.default
    try:
        graph_module = fx.symbolic_trace(module, concrete_args=concrete or None)
    except Exception as exc:  # fx raises many types; all mean "not traceable"
        raise ConfigError(
            f"cannot split {type(module).__name__} into a Sequential: torch.fx cannot trace it "
            f"({type(exc).__name__}: {exc}){_where(exc)}. Rewrite that construct without "
            f"data-dependent Python control flow, or build the layer list by hand"
        ) from exc
    _bake_defaults(graph_module, concrete)
    return graph_module


def _bake_defaults(graph_module: fx.GraphModule, concrete: dict[str, Any]) -> None:
    """Drop the placeholders fx keeps for defaulted parameters (and their value checks).

    A check left behind would be the only node before the first layer and so become a piece
    of its own that does no work.
    """
    if not concrete:
        return
    extra = [n for n in graph_module.graph.nodes if n.op == "placeholder"][-len(concrete) :]
    for node, value in zip(extra, concrete.values(), strict=True):
        for user in list(node.users):
            checks = list(user.users)
            if user.target is _assert_is_none and value is None and user.args[0] is node:
                graph_module.graph.erase_node(user)
            elif user.target is operator.eq and all(c.target is torch._assert for c in checks):
                for check in checks:
                    graph_module.graph.erase_node(check)
                graph_module.graph.erase_node(user)
            else:
                user.args = fx.map_arg(user.args, _replacing(node, value))
                user.kwargs = fx.map_arg(user.kwargs, _replacing(node, value))
        graph_module.graph.erase_node(node)
    graph_module.recompile()


def _replacing(node: fx.Node, value: Any) -> Callable[[fx.Node], Any]:
    """A ``map_arg`` function that puts ``value`` where ``node`` was used."""

    def swap(n: fx.Node) -> Any:
        return value if n is node else n

    return swap


def _where(exc: BaseException) -> str:
    """The innermost user (non-torch) source line in the traceback of `exc`."""
    torch_dir = torch.__file__.rsplit("/", 1)[0]
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(torch_dir)
    ]
    if not frames:
        return ""
    f = frames[-1]
    line = (f.line or linecache.getline(f.filename, f.lineno or 0)).strip()
    return f" at {f.filename}:{f.lineno} `{line}`"


def _run(graph_module: fx.GraphModule, inputs: Sequence[Tensor]) -> dict[fx.Node, Any]:
    """Run the graph once on the example, recording every node's value (to know its type).

    The run uses a throwaway copy of the modules and a forked RNG: in train mode it would
    otherwise update BatchNorm running statistics in the result and advance the caller's
    random state through dropout.
    """
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = super().run_node(n)
            return values[n]

    scratch = copy.deepcopy(graph_module)
    with torch.no_grad(), torch.random.fork_rng():
        Recorder(scratch, graph=graph_module.graph).run(*inputs)
    return values


def _live_at(i: int, nodes, placeholders, last_use) -> list[fx.Node]:
    """Values defined before node `i` and used at or after it (parameters are never carried)."""
    defined = [*placeholders, *nodes[:i]]
    return [n for n in defined if n.op != "get_attr" and last_use[n] >= i]


def _params_of(graph_module: fx.GraphModule, node: fx.Node) -> set[int]:
    # a call_module's or get_attr's target is the dotted name of what it uses
    if node.op == "call_module":
        sub = graph_module.get_submodule(cast(str, node.target))
        return {id(t) for t in [*sub.parameters(), *sub.buffers()]}
    if node.op == "get_attr":
        return {id(_get_attr(graph_module, cast(str, node.target)))}
    return set()


def _legal_cuts(graph_module, nodes, order, last_use, values) -> list[int]:
    """Start indices of the pieces: before each submodule call where the cut is legal."""
    candidates = [i for i, n in enumerate(nodes) if i > 0 and n.op == "call_module"]
    users_of: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        # A get_attr is copied into each piece that uses it, so its users are what count.
        at = [order[u] for u in n.users if u in order] if n.op == "get_attr" else [i]
        for pid in _params_of(graph_module, n):
            users_of.setdefault(pid, []).extend(at)
    blocked: set[int] = set()
    for uses in users_of.values():
        blocked.update(range(min(uses) + 1, max(uses) + 1))  # shared state spans these cuts
    placeholders = [n for n in order if n.op == "placeholder"]
    starts = [0]
    for i in candidates:
        if i in blocked:
            continue
        live = _live_at(i, nodes, placeholders, last_use)
        if live and all(isinstance(values[n], Tensor) for n in live):
            starts.append(i)
    return starts


def _get_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _piece(
    root: fx.GraphModule,
    carried: list[fx.Node],
    body: list[fx.Node],
    live_out: list[fx.Node] | None,
    output: fx.Node,
) -> fx.GraphModule:
    """A GraphModule taking the carried values (one Tensor, or a tuple) and returning live_out."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if len(carried) == 1:
        env[carried[0]] = graph.placeholder("x")
    else:
        bundle = graph.placeholder("x")
        for j, n in enumerate(carried):
            env[n] = graph.call_function(_item, (bundle, j))

    def lookup(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":  # pragma: no cover - guarded by the liveness analysis
                raise ConfigError(f"internal error: value {n.name} is not carried into a piece")
            env[n] = graph.node_copy(n)
        return env[n]

    for n in body:
        if n.op != "get_attr":  # copied on first use, so no piece holds an unused parameter
            env[n] = graph.node_copy(n, lookup)
    if live_out is None:
        graph.output(fx.map_arg(output.args[0], lookup))
    elif len(live_out) == 1:
        graph.output(lookup(live_out[0]))
    else:
        graph.output(tuple(lookup(n) for n in live_out))
    piece = fx.GraphModule(root, graph)
    piece.graph.lint()
    return piece


def _item(values: tuple[Tensor, ...], index: int) -> Tensor:
    """Unpack one carried value (a named function keeps the generated code readable)."""
    return values[index]
