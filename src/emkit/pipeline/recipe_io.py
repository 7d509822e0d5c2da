"""Reading a recipe: a YAML file (or a shipped recipe's name) or a mapping, with ``${NAME}`` from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emkit.config import from_dict, load_yaml
from emkit.errors import EmkitError
from emkit.pipeline.recipe import Recipe


def recipe_from_dict(data: dict[str, Any], where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise EmkitError(f"{where}: expected a mapping at the top level")
    if "name" not in data:
        raise EmkitError(f"{where}: missing 'name'")
    data = dict(data)
    train = data.get("train")
    if isinstance(train, dict) and ({"name", "model"} & set(train)):
        raise EmkitError(f"{where}.train: 'name' and 'model' are set by the pipeline",
                         hint="give the base model as the top-level 'model'")
    return from_dict(Recipe, data, where)


def expand_env(value: Any, where: str = "recipe") -> Any:
    """Replace ``${NAME}`` in every string with the environment variable (an unset one is an error)."""
    import os
    import re

    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        def sub(m: re.Match) -> str:
            if m.group(1) not in os.environ:
                raise EmkitError(f"{where}: environment variable {m.group(1)} is not set",
                                 hint=f"export {m.group(1)}=... before running the recipe")
            return os.environ[m.group(1)]

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, value)
    return value


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe YAML (a path, or the name of one in ``recipes/`` such as ``smoke``)."""
    p = Path(path)
    if not p.is_file() and not p.suffix:
        for cand in (Path("recipes") / f"{p}.yaml", RECIPES_DIR / f"{p}.yaml"):
            if cand.is_file():
                p = cand
                break
    if not p.is_file():
        raise EmkitError(f"no recipe at {path}", hint="give a YAML file, e.g. recipes/smoke.yaml")
    return recipe_from_dict(expand_env(load_yaml(p), str(p)), where=str(p))


RECIPES_DIR = Path(__file__).resolve().parents[3] / "recipes"
