"""Arrays that count no references inside jitted code.

Numba counts a reference on every array a jitted function receives, and on every array an
inlined helper binds: an atomic add and an atomic subtract each, which refcount pruning
leaves in place around loops. In an event loop that calls its helpers a few times an event,
those atomics were half of the request-level kernel's time (BENCHMARKS.md). A jitted entry
that hands its arguments on through :func:`borrowed` pays them once a call instead:

    @njit(cache=True)
    def entry(*args):
        return work(*borrowed(args))
"""

from __future__ import annotations

from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["borrowed"]


@intrinsic
def borrowed(typingctx, items):
    """``items`` (a tuple) with each array's link to its owner left out: the same arrays,
    counting no references. Only for the arguments of a jitted entry, handed on to the
    function that does the work: the entry's caller owns them until it returns, and the work
    must neither keep nor return one."""
    if not isinstance(items, types.BaseTuple):
        return None

    def codegen(context, builder, sig, args):
        out = []
        for i, ty in enumerate(items):
            v = builder.extract_value(args[0], i)
            if isinstance(ty, types.Array):
                a = context.make_array(ty)(context, builder, value=v)
                a.meminfo = cgutils.get_null_value(a.meminfo.type)
                a.parent = cgutils.get_null_value(a.parent.type)
                v = a._getvalue()
            out.append(v)
        return context.make_tuple(builder, sig.return_type, out)

    return items(items), codegen
