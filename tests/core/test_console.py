"""Where the run summary says the MLflow UI is: `make ui` only in a checkout whose Makefile serves that store
(tests/end_to_end/test_wheel.py runs the installed command from an empty folder)."""

from __future__ import annotations

from pipeline.core.console import ui_hint

PAGE = "#/experiments/1/runs/abc"


def test_make_ui_only_where_the_makefile_serves_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert ui_hint(here, PAGE) == f"`mlflow ui --backend-store-uri {here}`, then http://127.0.0.1:5000/{PAGE}"
    (tmp_path / "Makefile").write_text("ui: stamp ## serve the MLflow UI\n\tmlflow ui\n")
    assert ui_hint(here, PAGE) == f"`make ui`, then http://127.0.0.1:5000/{PAGE}"
    elsewhere = "sqlite:////data/other.db"  # tracking.uri set to another store: make ui would serve the wrong one
    assert ui_hint(elsewhere, PAGE).startswith(f"`mlflow ui --backend-store-uri {elsewhere}`")


def test_a_tracking_server_is_its_own_ui_and_its_credentials_stay_out():
    assert ui_hint("http://***@mlflow.lab:5000/", PAGE) == f"open http://mlflow.lab:5000/{PAGE}"
