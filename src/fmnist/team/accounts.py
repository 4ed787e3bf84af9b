"""MLflow accounts on the stack's server, through MLflow's own client of the basic-auth app
(``mlflow.server.get_app_client("basic-auth", ...)``), signed in as the stack's admin.

MLflow's REST clients take their credentials from ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``; :func:`admin_client` sets them for the length of one call.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import warnings
from collections.abc import Iterator

from fmnist.team.process import http_ok
from fmnist.team.stack import ADMIN, Stack, TeamError, TeamInputError

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


@contextlib.contextmanager
def admin_client(stack: Stack) -> Iterator:
    """MLflow's auth client for the stack's server as the admin; MLflow's errors as one TeamError."""
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():  # loading the client imports MLflow's FastAPI app, which warns about Starlette
        warnings.simplefilter("ignore")
        from mlflow.server import get_app_client

        client = get_app_client("basic-auth", tracking_uri=stack.mlflow_url())
    url = client.tracking_uri
    if not http_ok(url + "/health"):  # before MLflow's client retries for minutes
        raise TeamError(f"MLflow server {url} is unreachable: make team-up")
    credentials = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": stack.secrets["admin_password"]}
    saved = {key: os.environ.get(key) for key in credentials}
    os.environ.update(credentials)
    try:
        yield client
    except MlflowException as err:
        raise TeamError(f"MLflow server {url}: {' '.join(err.message.split())[:300]}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _already_exists(err: Exception) -> bool:
    return getattr(err, "error_code", None) == "RESOURCE_ALREADY_EXISTS"


def add_user(stack: Stack, name: str, password: str | None = None) -> str:
    """Create the account ``name``; returns its password (generated unless given)."""
    from mlflow.exceptions import MlflowException

    password = password or secrets.token_hex(16)
    with admin_client(stack) as client:
        try:
            client.create_user(name, password)
        except MlflowException as err:
            if _already_exists(err):
                raise TeamError(f"MLflow user {name!r} already exists") from None
            raise
    return password


def grant(stack: Stack, name: str, permission: str, experiment: str) -> None:
    """Give ``name`` a permission on an experiment, replacing any it had there (READ is everyone's
    already; EDIT lets them log runs into it and change its runs; MANAGE adds deleting and granting)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if permission not in PERMISSIONS:
        raise TeamInputError(f"permission {permission!r} is not one of {', '.join(PERMISSIONS)}")
    with admin_client(stack) as client:
        found = MlflowClient(tracking_uri=stack.mlflow_url()).get_experiment_by_name(experiment)
        if found is None:
            raise TeamError(f"no experiment named {experiment!r} on {stack.mlflow_url()}")
        resource = ("experiment", found.experiment_id)
        try:
            client.grant_user_permission(name, *resource, permission)
        except MlflowException as err:
            if not _already_exists(err):
                raise
            # the auth app grants only where the user has no grant yet, and has no call to change one
            if client.get_user_permission(name, *resource).permission != permission:
                client.revoke_user_permission(name, *resource)
                client.grant_user_permission(name, *resource, permission)
