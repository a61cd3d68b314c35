"""Helpers over the FX graph dynamo hands the backend."""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch


def constant_mask(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> list[bool]:
    """Which graph inputs are module parameters or buffers (lifted by dynamo), not user data."""
    mask = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        is_constant = isinstance(value, torch.nn.Parameter) or hasattr(value, "_dynamo_static_input_type")
        if not is_constant:
            grapharg = node.meta.get("grapharg")
            source = getattr(grapharg, "source", None)
            is_constant = source is not None and "ParamBuffer" in repr(source)
        mask.append(is_constant)
    return mask


def output_on_copies(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                     mask: Sequence[bool]) -> tuple[Any, bool]:
    """The graph's output on copies of the caller's inputs, and whether it wrote into them: a run
    at compile time must not change the caller's tensors."""
    copies = [x.clone() if not c and isinstance(x, torch.Tensor) else x
              for x, c in zip(example_inputs, mask)]
    output = gm(*copies)
    wrote = any(not torch.equal(copy, x) for copy, x, c in zip(copies, example_inputs, mask)
                if not c and isinstance(x, torch.Tensor))
    return output, wrote


def non_tensor_inputs(example_inputs: Sequence[Any], mask: Sequence[bool]) -> list[str]:
    """Type names of the user inputs that are not tensors (SymInts, Python values): what a trace
    or a converted graph would fix as constants."""
    return [type(x).__name__ for x, c in zip(example_inputs, mask)
            if not c and not isinstance(x, torch.Tensor)]


def graph_tensors(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> list[torch.Tensor]:
    """Every tensor the graph reads that could carry state: inputs plus its own attributes."""
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    tensors += list(gm.parameters()) + list(gm.buffers())
    return tensors


def ambient_autocast_dtype() -> torch.dtype | None:
    """The CPU autocast dtype the caller compiled under, if any."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return None


def compute_autocast(dtype: str):
    """Autocast context that realises the ``dtype`` knob, unless the caller already set one."""
    if dtype == "bfloat16" and ambient_autocast_dtype() is None:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def needs_output_cast(dtype: str) -> bool:
    """Outputs keep the caller's dtype: cast back only when autocast is ours, not the caller's."""
    return dtype == "bfloat16" and ambient_autocast_dtype() is None


def copy_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A GraphModule with its own Graph (dynamo keeps using the original), sharing the tensors."""
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    return torch.fx.GraphModule(gm, graph)


def cast_float_outputs_to_float32(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Append ``.float()`` to graph outputs that are float32 in eager mode (autocast may lower them)."""
    gm = copy_graph_module(gm)
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")

    def cast(node):
        value = node.meta.get("example_value", node.meta.get("val"))
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            with gm.graph.inserting_before(output):
                new = gm.graph.call_method("float", (node,))
                new.meta = dict(node.meta)
            return new
        return node

    output.args = (torch.fx.node.map_arg(output.args[0], cast),)
    gm.graph.lint()
    gm.recompile()
    return gm


@contextlib.contextmanager
def intra_op_threads(threads: int):
    """Run with ``threads`` intra-op threads (0: leave as is), restoring the caller's setting."""
    previous = torch.get_num_threads()
    if threads and threads != previous:
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
    else:
        yield


def outputs_close(expected: Any, actual: Any, rtol: float, atol: float) -> str | None:
    """None when the two output structures match within tolerance, else what differs."""
    flat_e = expected if isinstance(expected, (list, tuple)) else [expected]
    flat_a = actual if isinstance(actual, (list, tuple)) else [actual]
    if len(flat_e) != len(flat_a):
        return f"{len(flat_a)} outputs instead of {len(flat_e)}"
    for i, (e, a) in enumerate(zip(flat_e, flat_a)):
        if isinstance(e, torch.Tensor):
            if not isinstance(a, torch.Tensor) or e.shape != a.shape:
                return f"output {i}: shape {getattr(a, 'shape', type(a))} instead of {tuple(e.shape)}"
            scale = e.detach().float().abs().max().item() if e.numel() else 0.0
            err = (e.detach().float() - a.detach().float()).abs().max().item() if e.numel() else 0.0
            if not err <= atol + rtol * scale:  # NaN or inf never passes
                return f"output {i}: max abs error {err:.3g} against scale {scale:.3g}"
    return None


LIFTED_PREFIX = "_lifted_constant_"


def input_names(gm: torch.fx.GraphModule, positions: Sequence[int]) -> list[str | None]:
    """The forward argument each of these graph inputs is, where dynamo read it from one."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    sources = [getattr(n.meta.get("grapharg"), "source", None) for n in placeholders]
    return [getattr(sources[i], "local_name", None) if i < len(sources) else None for i in positions]


def lift_constants(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]
                   ) -> tuple[torch.fx.GraphModule, list[int]]:
    """Turn lifted parameter/buffer inputs back into graph attributes.

    Freezing only folds what the graph owns, and dynamo passes parameters as inputs, so the
    frozen paths take them back. Returns the new graph and the positions of the real user inputs.
    """
    mask = constant_mask(gm, example_inputs)
    gm = copy_graph_module(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first_real = next((n for n in gm.graph.nodes if n.op != "placeholder"), None)
    for i, (node, is_constant, value) in enumerate(zip(placeholders, mask, example_inputs)):
        if not is_constant:
            continue
        name = f"{LIFTED_PREFIX}{i}"
        gm.register_buffer(name, value.detach())
        with gm.graph.inserting_before(first_real):
            attr = gm.graph.get_attr(name)
        attr.meta = dict(node.meta)
        node.replace_all_uses_with(attr)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm, [i for i, c in enumerate(mask) if not c]
