"""Tools that ship with the project, for the tool demo model and for trying the tool loop.

`add` is the calculator the tool demo model (pipeline/assets/tool_model) was trained to call:
`session=calculator_tools`. Your own tools are plain functions in your own module, named the
same way: `session.tools=[{_target_: mytools.search, index: /data/index}]`.
"""

from __future__ import annotations


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b
