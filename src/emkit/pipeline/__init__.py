"""The whole study in one command: a recipe, ten resumable stages, and a report.

``emkit run RECIPE.yaml`` runs: baseline eval → fine-tune the mixture family → evaluate it → train
(or load) the SAE → diff → interpret → steering screen and dose–response → prediction →
re-alignment → report. Each stage is skipped when done with the same settings.
"""

from emkit.pipeline.context import read_result
from emkit.pipeline.recipe import STAGE_NAMES, Recipe
from emkit.pipeline.recipe_io import load_recipe, recipe_from_dict
from emkit.pipeline.runner import format_plan, plan, run_pipeline

__all__ = ["STAGE_NAMES", "Recipe", "format_plan", "load_recipe", "plan", "read_result", "recipe_from_dict",
           "run_pipeline"]
