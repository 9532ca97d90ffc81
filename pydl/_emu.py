"""The CPU emulation of CUDA: where its headers are, and the source rewrite that lets g++ compile a ``.cu`` file.

One emulator serves the whole project: the course's CUDA checker (:mod:`pydl.learn.cuda`) and the emulated
build of pydl's own kernels both compile their ``.cu`` source, after :func:`rewrite`, with the host C++ compiler
against ``csrc/emu/cuda_emu.h`` (see docs/ARCHITECTURE.md, "The CUDA emulator"). ``INCLUDE_DIR`` goes first on
the include path: its stand-ins for ``<cuda_runtime.h>`` and friends all lead to the emulator header.

This module is plain Python (no torch import), so the build code can use it before any extension loads.
"""
from __future__ import annotations

import os
import re

from . import _paths

#: the folder of stand-in CUDA headers (cuda_runtime.h, ...): put it first on the include path (-I). (An install
#: without its sources gets the wheel's path, absent: the compile that uses it then names the missing header.)
INCLUDE_DIR = os.path.join(_paths.find_csrc() or os.path.join(_paths.PKG_DIR, "_csrc"), "emu")
#: the emulator runtime; compile with ``-include HEADER`` so even a file that includes nothing gets it
HEADER = os.path.join(INCLUDE_DIR, "cuda_emu.h")

#: compile flags for a kernel's translation unit that let the memory checks see its loads and stores: the
#: compiler calls a hook before each one (see csrc/emu/cuda_emu.h). Link WITHOUT -fsanitize=thread (compile with
#: -c, then link) so ThreadSanitizer's runtime stays out and the emulator's hooks answer; -g gives reports their
#: source lines.
CHECK_FLAGS = ("-fsanitize=thread",)

#: the checks, by name, as PYDL_EMU_CHECKS takes them (comma-separated; all are on by default)
CHECKS = ("memcheck", "racecheck", "initcheck", "synccheck")

# A launch: a kernel name, optionally qualified and with template arguments, then <<<config>>>(. The template
# arguments may not nest (`k<T>` yes, `k<A<B>>` no) -- pydl's launches do not need more, and a regex cannot
# balance brackets.
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:\s*<[^<>;(){}]*>)?)\s*<<<([^;{}]*?)>>>\s*\(")
# Comments and string literals, matched together so a `//` inside a string is not taken for a comment.
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"", re.S)
# A kernel template: `template <...> __global__ void [__launch_bounds__(...)] name(`. A launch of such a name
# without template arguments lets the compiler deduce them from the launch's arguments; no function pointer can
# be taken before that, so those launches go through a generic lambda instead (see rewrite()).
_TEMPLATE_KERNEL = re.compile(r"template\s*<[^;{]*?>\s*(?:(?:static|inline)\s+)*__global__\s+(?:(?:static|inline)\s+)*"
                              r"void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s*)?([\w:<>\s\*]+?)\s+(\w+)\s*\[\s*\]\s*;")
_SHARED = re.compile(r"__shared__\s+(?:__align__\(\d+\)\s*)?([\w:<>\s]+?)\s+(\w+)\s*((?:\[[^\];]+\]\s*)*);")


def rewrite(source: str, filename: str) -> str:
    """``source`` (CUDA C++) rewritten so g++ can compile it against the emulator; line numbers are kept.

    Three CUDA-only syntaxes change; everything else is left as written, so compiler messages and the checks'
    source lines point at the author's file (a ``#line`` directive names ``filename``)::

        kernel<<<grid, block[, smem[, stream]]>>>(args)
            ->  pydl_emu::Launcher(grid, block, ...).bind(kernel, "kernel")(args)
            (a kernel template launched without template arguments: .bind_deduced(<generic lambda>, "kernel"))
        __shared__ T name[N]...;                          ->  auto& name = pydl_emu::shared<T[N]...>(key, "name");
        extern __shared__ T name[];                       ->  T* name = pydl_emu::dynamic_shared<T>("name");

    A ``__shared__`` array is a *per-block* object on a GPU but a single static in C++; the rewrite turns each
    declaration into a lookup in the running block's arena, keyed by its position in the file.
    """
    key = [0]
    templates = set(_TEMPLATE_KERNEL.findall(_COMMENT.sub("", source)))

    def launch(m):
        name = re.sub(r"\s+", "", m.group(1))
        if name in templates:  # template arguments deduced from the call: call it from a generic lambda
            return (f"pydl_emu::Launcher({m.group(2)}).bind_deduced([&](auto&&... pydl_emu_args) PYDL_EMU_NOSAN "
                    f'{{ {name}(pydl_emu_args...); }}, "{name}")(')
        return f'pydl_emu::Launcher({m.group(2)}).bind({m.group(1)}, "{name}")('

    def ext(m):
        return f'{m.group(1)}* {m.group(2)} = pydl_emu::dynamic_shared<{m.group(1)}>("{m.group(2)}");'

    def shared(m):
        key[0] += 1
        # each extent parenthesised: a `>` in it (`A > B ? A : B`) would otherwise close the template argument list
        dims = "".join(f"[({d.strip()})]" for d in re.findall(r"\[([^\]]+)\]", m.group(3)))
        return f'auto& {m.group(2)} = pydl_emu::shared<{m.group(1)}{dims}>({key[0]}L, "{m.group(2)}");'

    # comments go (newlines kept, so line numbers stay): a `<<<...>>>` in a comment is not a launch
    source = _COMMENT.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "\n" * m.group(0).count("\n"),
                          source)
    out = _LAUNCH.sub(launch, source)
    out = _EXTERN_SHARED.sub(ext, out)
    out = _SHARED.sub(shared, out)
    return f'#line 1 "{filename}"\n' + out
