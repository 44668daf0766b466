"""Model cards (the ``README.md`` saved beside the weights)."""

from importlib import resources
from typing import TYPE_CHECKING, Any

import jinja2

from affectfpn._version import __version__

if TYPE_CHECKING:
    from affectfpn.models.affectfpn import AffectFPN


def render_model_card(model: "AffectFPN", info: dict[str, Any]) -> str:
    """Render the card of ``model``; ``info`` supplies name, description, metrics and the like."""
    config = model.config
    neck = "feature pyramid (F3R)" if config.neck == "fpn" else "plain classifier (no pyramid)"
    levels = f", {config.num_levels} pooled levels of width {config.fpn_width}"
    architecture = f"{config.backbone} + {neck}" + (levels if config.neck == "fpn" else "")
    template_text = (resources.files("affectfpn") / "templates" / "model_card.md.j2").read_text(
        encoding="utf-8"
    )
    env = jinja2.Environment(
        autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    template = env.from_string(template_text)
    return template.render(
        name=info.get("name", "affectfpn model"),
        description=info.get("description", "A facial affect model built with affectfpn."),
        license=info.get("license", "other"),
        datasets=list(info.get("datasets", [])),
        architecture=architecture,
        tasks=list(config.tasks),
        input_size=config.input_size,
        mean=list(config.mean),
        std=list(config.std),
        num_params=model.num_params(),
        version=__version__,
        recipe=info.get("recipe", ""),
        expressions=list(config.expressions),
        action_units=list(config.action_units),
        metrics=info.get("metrics", {}),
        training=info.get("training", ""),
        limitations=info.get("limitations", ""),
        repo_hint=info.get("repo_id", "path/to/this/folder"),
    )
