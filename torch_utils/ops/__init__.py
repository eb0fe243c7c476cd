"""Custom ops. Each op module exposes one public function with ``impl='auto'|'cuda'|'ref'``.

The pure-PyTorch reference (``_<op>_ref``) is the spec. CUDA kernels plug in through
:func:`torch_utils.ops.dispatch.resolve_impl` (see architecture.md, "Every custom op has a
pure-PyTorch twin").
"""
