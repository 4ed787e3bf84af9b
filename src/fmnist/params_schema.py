"""The JSON Schema of ``params.yaml``, generated from the models in :mod:`fmnist.params`.

Editors with a YAML language server complete and check ``params.yaml`` from the checked-in
``params.schema.json`` (a test keeps it current); regenerate it after changing the models::

    fmnist-params --schema > params.schema.json
"""

from __future__ import annotations

import json

from fmnist.params import Params

SCHEMA_FILE = "params.schema.json"


def json_schema() -> dict:
    """The JSON Schema of ``params.yaml`` (what ``params.schema.json`` holds)."""
    schema = Params.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"
