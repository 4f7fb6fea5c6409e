"""A signal that a library turns into its own error, or swallows, is still the interruption (pipeline.core.errors)."""

from __future__ import annotations

import gc
import sys

import pytest

from pipeline.core.errors import (
    Interrupted,
    forget_signals,
    interruption_behind,
    quiet_swallowed_signals,
    raise_if_signalled,
    reraise_interruption,
    signalled,
)


@pytest.fixture(autouse=True)
def _no_signal_left():
    forget_signals()
    yield
    forget_signals()


def test_an_error_raised_in_place_of_a_signal_is_that_signal():
    library_error = ModuleNotFoundError("Could not import module 'LlamaConfig'")
    assert interruption_behind(library_error) is library_error  # no signal: a failure is a failure
    raise_if_signalled()  # and nothing to raise
    sigterm = signalled(Interrupted())
    assert interruption_behind(library_error) is sigterm
    with pytest.raises(Interrupted) as raised:
        reraise_interruption(library_error)
    assert raised.value is sigterm and raised.value.__cause__ is library_error


def test_a_swallowed_signal_is_raised_later_and_a_new_command_forgets_it():
    ctrl_c = signalled(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as raised:
        raise_if_signalled()
    assert raised.value is ctrl_c
    forget_signals()
    raise_if_signalled()
    assert isinstance(interruption_behind(ValueError()), ValueError)


def test_a_signal_landing_in_a_finalizer_is_not_printed_and_is_raised_later(monkeypatch, capsys):
    """Python cannot raise from a __del__ or a weakref callback: it prints "Exception ignored ... Traceback" through
    sys.unraisablehook, which the entry point points here (a Ctrl-C landed in weakref's callback mid-sweep)."""
    monkeypatch.setattr(sys, "unraisablehook", quiet_swallowed_signals)

    class Finalized:
        def __init__(self, raised: BaseException) -> None:
            self.raised = raised

        def __del__(self) -> None:
            raise self.raised

    Finalized(signalled(KeyboardInterrupt()))
    gc.collect()
    assert "Traceback" not in capsys.readouterr().err  # not printed ...
    with pytest.raises(KeyboardInterrupt):
        raise_if_signalled()  # ... but not lost
    Finalized(ValueError("a library's own"))
    gc.collect()
    assert "ValueError: a library's own" in capsys.readouterr().err  # anything else as Python shows it
