"""A stand-in GPU for CPU-only machines, to test that code is device-correct before it meets a real GPU.

Device bugs hide on a CPU-only machine: when everything lives on the CPU, code that forgets to move a module, or
that reads the device off "the first parameter", still runs. `stand_in_gpu()` gives the CPU a second device with
CUDA's rules, so such code fails here the way it fails on a GPU:

    with devicecheck.stand_in_gpu() as gpu:          # gpu == torch.device("meta")
        engine.fit(model, data, device="auto")        # "auto" now resolves to the stand-in device

Inside the block:

* the stand-in device is PyTorch's "meta" device, but its tensors carry real data: a tensor moved or created there
  (`.to(gpu)`, `torch.zeros(..., device=gpu)`, `module.to(gpu)`) is a `StandInTensor` that reports device meta and
  computes with the CPU kernels on a private CPU copy, so results equal the CPU's bit for bit;
* every operation checks its operands as CUDA does and raises "Expected all tensors to be on the same device" when
  a stand-in tensor meets a CPU tensor (0-dim CPU scalars, CPU index tensors and explicit copies are allowed, as
  on CUDA);
* `torch.tensor(..., device=gpu)` and `torch.as_tensor` build on the CPU and move, and `torch.Generator(device=gpu)`
  is a CPU generator, since the stand-in's values live on the CPU;
* `resolve_device("auto")` returns the stand-in device (through `FERNB_DEVICE`), and `torch.cuda.is_available()`
  says True to fernb's code, so code that bypasses `fernb.engine.resolve_device` and decides by itself that CUDA
  is there asks for a CUDA device this machine does not have, and fails.

`count_host_syncs()` lists, inside such a block, every operation that would make the host wait for a GPU: a read
of a value (`.item()`, `bool(t)`, `.tolist()`, `torch.equal`), a copy to the CPU, and an operation whose output
size depends on the data (`nonzero`, boolean-mask indexing, `masked_select`, `unique`, `repeat_interleave` without
`output_size`). A training loop that is to keep a GPU busy does a fixed number of those per epoch, none per step;
tests/test_device.py counts them for every training loop.

It is a test tool (tests/test_device.py uses it on every public function of fernb that takes `device`), not an
accelerator: it is slower than the CPU.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_map

__all__ = ["StandInTensor", "stand_in_gpu", "count_host_syncs", "DEVICE", "DeviceMismatch"]

DEVICE = torch.device("meta")
aten = torch.ops.aten

# Operations that may take operands on two devices on CUDA: explicit copies between devices.
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default,
           aten._copy_from_and_resize.default, aten.lift_fresh.default, aten.lift_fresh_copy.default}
# Indexing a device tensor with CPU indices is allowed on CUDA (the indices are copied over).
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class DeviceMismatch(RuntimeError):
    """Raised where CUDA would raise: an operation mixing tensors on the stand-in device and on the CPU."""


class StandInTensor(torch.Tensor):
    """A tensor on the stand-in device: reports `DEVICE`, holds its values in `elem`, a CPU tensor."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool = False):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=DEVICE, requires_grad=requires_grad)

    def __init__(self, elem: torch.Tensor, requires_grad: bool = False):
        self.elem = elem

    def __repr__(self, *, tensor_contents=None):
        return f"StandInTensor({self.elem!r}, device='{DEVICE}')"

    def tolist(self):
        _record_sync("tolist")
        return self.elem.tolist()                    # a device-to-host read, as on CUDA

    def numpy(self, *, force: bool = False):
        raise TypeError(f"can't convert {DEVICE.type} (stand-in GPU) device type tensor to numpy. Use Tensor.cpu() "
                        f"to copy the tensor to host memory first.")

    def __tensor_flatten__(self):
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return StandInTensor(inner["elem"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _is_stand_in_device(device) -> bool:
    return device is not None and torch.device(device).type == DEVICE.type


def _check_devices(func, args, kwargs) -> None:
    """CUDA's operand rule: all tensors on one device, except 0-dim CPU tensors and CPU indices."""
    if func in _COPIES:
        return
    stand_in, cpu = [], []

    def visit(t, is_index=False):
        if isinstance(t, StandInTensor):
            stand_in.append(t)
        elif isinstance(t, torch.Tensor) and t.device.type == DEVICE.type:
            raise DeviceMismatch(f"{func}: a {DEVICE.type} tensor without values reached the stand-in GPU (it was "
                                 f"made below the dispatcher); build it on the CPU and move it with .to(device)")
        elif isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0 and not is_index:
            cpu.append(t)

    flat_args = list(args) + list(kwargs.values())
    for position, a in enumerate(flat_args):
        index_arg = func in _INDEXING and position == 1          # the `indices` list of index / index_put
        if isinstance(a, (list, tuple)):
            for t in a:
                visit(t, index_arg)
        else:
            visit(a)
    if stand_in and cpu:
        raise DeviceMismatch(
            f"Expected all tensors to be on the same device, but found at least two devices, {DEVICE.type} (the "
            f"stand-in GPU) and cpu! (in {func}: a CPU tensor of shape {tuple(cpu[0].shape)} met a device tensor "
            f"of shape {tuple(stand_in[0].shape)})")


# Operations after which CUDA's host waits for the device: a value read, or an output sized by the data.
_SYNCING = {aten._local_scalar_dense.default: "item", aten.equal.default: "equal", aten.nonzero.default: "nonzero",
            aten.masked_select.default: "masked_select", aten._unique2.default: "unique",
            aten.unique_dim.default: "unique", aten.unique_consecutive.default: "unique",
            aten.repeat_interleave.Tensor: "repeat_interleave", aten.repeat_interleave.self_Tensor: "repeat_interleave"}
_SYNC_LOGS: list[list[str]] = []


@contextlib.contextmanager
def count_host_syncs():
    """Yield a list that collects, for the block, the name of every operation on the stand-in device that makes a
    CUDA host wait for the GPU (module docstring); blocks nest (an operation is listed in every open block)."""
    log: list[str] = []
    _SYNC_LOGS.append(log)
    try:
        yield log
    finally:
        del _SYNC_LOGS[next(i for i, open_log in enumerate(_SYNC_LOGS) if open_log is log)]   # by identity


def _record_sync(name: str) -> None:
    for log in _SYNC_LOGS:
        log.append(name)


def _sync_name(func, args, kwargs, leaving: bool, arriving: bool) -> str | None:
    if arriving and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
        return "copy from host"                  # from pageable memory: CUDA syncs the stream before it
    stand_in = [a for a in _flat(args, kwargs) if isinstance(a, StandInTensor)]
    if not stand_in:
        return None
    if func is aten.copy_.default and isinstance(args[0], StandInTensor) and not isinstance(args[1], StandInTensor) \
            and isinstance(args[1], torch.Tensor):
        return "copy from host"
    if leaving:
        return "copy to host"
    if func is aten.copy_.default and not isinstance(args[0], StandInTensor):
        return "copy to host"
    if func in _SYNCING and not (func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor)
                                 and kwargs.get("output_size") is not None):
        return _SYNCING[func]
    if func in _INDEXING and isinstance(args[0], StandInTensor) and len(args) > 1 and any(
            isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in (args[1] or ())):
        return "boolean-mask index"
    if func in _INDEXING and isinstance(args[0], StandInTensor) and len(args) > 1 and any(
            isinstance(t, torch.Tensor) and not isinstance(t, StandInTensor) and t.device.type == "cpu"
            for t in (args[1] or ())):
        return "copy from host"                  # CPU indices: copied to the GPU first
    return None


def _dispatch(func, args, kwargs):
    _check_devices(func, args, kwargs)
    target = kwargs.get("device")
    to_stand_in = _is_stand_in_device(target)
    on_device = to_stand_in or any(isinstance(a, StandInTensor) for a in _flat(args, kwargs))
    leaving = func is aten._to_copy.default and target is not None and not to_stand_in
    if _SYNC_LOGS:
        arriving = func is aten._to_copy.default and to_stand_in
        name = _sync_name(func, args, kwargs, leaving, arriving)
        if name is not None:
            _record_sync(name)

    def unwrap(t):
        return t.elem if isinstance(t, StandInTensor) else t

    kwargs = dict(kwargs)
    if to_stand_in:
        kwargs["device"] = torch.device("cpu")
    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
    if func is aten.copy_.default:           # dst.copy_(src): dst keeps its device
        return args[0]
    if leaving or not on_device:
        return out
    wrapped = tree_map(lambda t: StandInTensor(t) if isinstance(t, torch.Tensor) and not isinstance(t, StandInTensor)
                       and t.device.type == "cpu" else t, out)
    return return_and_correct_aliasing(func, args, kwargs, wrapped)


def _flat(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


class _StandInMode(TorchDispatchMode):
    """Routes factory calls and copies that name the stand-in device (`device="meta"`), which carry no stand-in
    tensor for `StandInTensor.__torch_dispatch__` to see, and checks every other operation's operands."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_stand_in_device(kwargs.get("device")) or any(isinstance(a, StandInTensor) for a in _flat(args, kwargs)):
            return _dispatch(func, args, kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def stand_in_gpu(cuda_available: bool = True):
    """Run the block with the stand-in device (module docstring); yields it (`torch.device("meta")`).

    cuda_available: what `torch.cuda.is_available()` answers to fernb's code inside (True: code that looks for
    CUDA itself instead of asking `fernb.engine.resolve_device` finds it, and fails on this machine); PyTorch's
    own checks get the true answer."""
    previous_env = os.environ.get("FERNB_DEVICE")
    previous_available = torch.cuda.is_available

    def is_available() -> bool:
        # fernb's own code is told `cuda_available`; PyTorch's internals (optimizers, autograd) the truth.
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == "fernb" or caller.startswith("fernb.") and caller != __name__:
            return cuda_available
        return previous_available()

    # torch.tensor / torch.as_tensor copy their data to the target device below the dispatcher, which would leave
    # a meta tensor with no values: build them on the CPU and move them through the dispatcher instead.
    previous_tensor, previous_as_tensor = torch.tensor, torch.as_tensor

    def via_cpu(constructor):
        def build(data, *args, device=None, **kwargs):
            if not _is_stand_in_device(device):
                return constructor(data, *args, device=device, **kwargs)
            requires_grad = kwargs.pop("requires_grad", False)
            return constructor(data, *args, **kwargs).to(DEVICE).requires_grad_(requires_grad)
        return build

    # A generator "on the device" draws on the CPU, where the stand-in's values live.
    previous_generator = torch.Generator

    class _AnyGenerator(type(previous_generator)):
        def __instancecheck__(cls, obj):
            return isinstance(obj, previous_generator)

    class StandInGenerator(previous_generator, metaclass=_AnyGenerator):
        def __new__(cls, device="cpu"):
            return previous_generator("cpu" if _is_stand_in_device(device) else device)

    os.environ["FERNB_DEVICE"] = DEVICE.type
    torch.cuda.is_available = is_available
    torch.tensor, torch.as_tensor = via_cpu(previous_tensor), via_cpu(previous_as_tensor)
    torch.Generator = StandInGenerator
    try:
        with _StandInMode():
            yield DEVICE
    finally:
        torch.cuda.is_available = previous_available
        torch.tensor, torch.as_tensor = previous_tensor, previous_as_tensor
        torch.Generator = previous_generator
        if previous_env is None:
            os.environ.pop("FERNB_DEVICE", None)
        else:
            os.environ["FERNB_DEVICE"] = previous_env
