"""serve (the OpenAI-compatible API) and keys (its API keys)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tunelab.cli.common import DebugOption, app, console, friendly_errors, out
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.serving.config import ServeConfig

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="serve.yaml: root, models, job defaults (docs/serving.md)."),
]
RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Where uploads, jobs and the registry live (default tunelab-serve)."),
]

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke the server's API keys.")
app.add_typer(keys_app, name="keys")


@app.command()
@friendly_errors
def serve(
    config: ConfigOption = None,
    root: RootOption = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="NAME=PATH: a base model to offer (repeatable).")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8000).")] = None,
    debug: DebugOption = False,
) -> None:
    """Serve the OpenAI-compatible files, fine-tuning jobs and inference API (an API key is required),
    and the web dashboard: runs, jobs, studies, a playground and the Review page for rating."""
    import logging

    import uvicorn

    from tunelab.serving.app import create_app
    from tunelab.serving.store import Store

    settings = _settings(config, root, host=host, port=port, models=_models(model or []))
    if not [k for k in Store(settings.database).all_keys() if k["revoked_at"] is None]:
        raise TunelabError(
            f"{settings.root}: no API key yet, and every /v1 route needs one",
            fix=f"tunelab keys create --root {settings.root}",
        )
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]note:[/] listening on {settings.host}: reachable beyond this machine")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    console.print(f"tunelab serve: http://{settings.host}:{settings.port}/v1 (root {settings.root})")
    console.print(f"  dashboard: http://{settings.host}:{settings.port}/ (log in with an API key)")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


@keys_app.command("create")
@friendly_errors
def keys_create(
    config: ConfigOption = None,
    root: RootOption = None,
    name: Annotated[
        str, typer.Option("--name", help="A label for the key (who or what uses it).")
    ] = "default",
    debug: DebugOption = False,
) -> None:
    """Create a key and print it: it is stored hashed and cannot be shown again."""
    from tunelab.serving.auth import create_key
    from tunelab.serving.store import Store

    key, row = create_key(Store(_settings(config, root).database), name)
    console.print(f"created {row['id']} ({name}); the key, shown once:")
    out.print(key)


@keys_app.command("list")
@friendly_errors
def keys_list(config: ConfigOption = None, root: RootOption = None, debug: DebugOption = False) -> None:
    """The keys: id, name, a hint of the key, and whether it is revoked."""
    from tunelab.serving.store import Store

    for row in Store(_settings(config, root).database).all_keys():
        state = "revoked" if row["revoked_at"] else "active"
        out.print(f"{row['id']}  {row['name']:<16} {row['hint']}  {state}")


@keys_app.command("revoke")
@friendly_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (tunelab keys list).")],
    config: ConfigOption = None,
    root: RootOption = None,
    debug: DebugOption = False,
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    from tunelab.serving.store import Store

    if not Store(_settings(config, root).database).revoke_key(key_id):
        raise TunelabError(f"no active key {key_id!r}", fix="tunelab keys list")
    console.print(f"revoked {key_id}")


def _settings(config: Path | None, root: Path | None, **overrides: object) -> ServeConfig:
    from tunelab.serving.config import load_serve_config

    return load_serve_config(config, root=root, **overrides)


def _models(pairs: list[str]) -> dict[str, dict[str, str]] | None:
    models = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise TunelabError(f"--model {pair!r}: expected NAME=PATH")
        models[name] = {"path": path}
    return models or None
