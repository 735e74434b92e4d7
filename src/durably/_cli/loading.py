"""Finding the user's ``App`` from a ``MODULE:APP`` reference."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from .._app import App


def load_app(ref: str, database: str | None) -> App:
    """Import ``module:attribute`` (attribute defaults to ``app``)."""
    module_name, _, attribute = ref.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise click.UsageError(f"{ref!r}: expected MODULE:APP, e.g. shop.workflows:app")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise click.UsageError(
                f"cannot import module {module_name!r} (from {ref!r}); run from the folder "
                "that contains it or put it on PYTHONPATH"
            ) from None
        raise click.UsageError(
            f"importing {module_name!r} failed: {exc}; is that package installed in this "
            f"environment ({sys.executable})?"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the module's own code failed
        # Where in the user's code, without the import machinery's frames.
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if "importlib" not in f.filename and f.filename != __file__
        ]
        where = "".join(traceback.format_list(frames[-3:]))
        what = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise click.ClickException(
            f"importing {module_name!r} (from {ref!r}) raised {what}\n{where}".rstrip()
        ) from None
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        found = type(app).__name__ if app is not None else "nothing"
        raise click.UsageError(f"{ref!r}: {module_name}.{attribute} is {found}, not a durably.App")
    if database:
        app.use_database(database)
    return app
