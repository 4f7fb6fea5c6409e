"""A signal that a library turns into its own error, or swallows, is still the interruption (pipeline.core.errors)."""

from __future__ import annotations

import pytest

from pipeline.core.errors import (
    Interrupted,
    forget_signals,
    interruption_behind,
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
