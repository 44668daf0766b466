"""Save a model with its model card, publish it to the Hugging Face Hub, load it back pinned.

Run it from the repository root, logged in to the Hub (``hf auth login``, or ``HF_TOKEN``)::

    python examples/publish_to_hub.py --model runs/finetune-example/best --repo-id you/affect-model
    python examples/publish_to_hub.py --repo-id you/affect-model --private

Steps: ``save_pretrained`` writes ``config.json``, ``model.safetensors`` and the model card
``README.md`` into ``--save-dir`` (check the card before publishing); ``push_to_hub`` uploads
the same three files in one commit and returns the commit id; ``from_pretrained(repo_id,
revision=commit)`` downloads exactly that commit (a pinned revision never changes, unlike
``main``), and the script checks that the downloaded model gives the same outputs.

Another Hub (a mirror, or a local test server) is chosen with the environment variable
``HF_ENDPOINT``, read when huggingface_hub is imported.

Defaults: the embedded default model, ``--save-dir hub-ready``.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from affectfpn import AffectFPN


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="registered name, model folder or Hub repo id (default: the embedded default model)",
    )
    parser.add_argument("--repo-id", required=True, help="the Hub repo to create or update")
    parser.add_argument("--save-dir", default="hub-ready", help="local copy of what is uploaded")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--description", default="A facial affect model built with affectfpn.")
    parser.add_argument("--license", default="other", help="licence of the weights")
    parser.add_argument(
        "--metrics",
        default=None,
        help='measured figures as JSON, e.g. \'{"my-test-set": {"accuracy": 0.71}}\'',
    )
    args = parser.parse_args(argv)

    model = AffectFPN.from_pretrained(args.model)
    card = {
        "name": args.repo_id.split("/")[-1],
        "repo_id": args.repo_id,  # the card's usage snippet loads this repo
        "description": args.description,
        "license": args.license,
        "metrics": json.loads(args.metrics) if args.metrics else {},
    }

    folder = model.save_pretrained(args.save_dir, model_card=card)
    files = sorted(p.name for p in Path(folder).iterdir())
    print(f"saved to {folder}: {', '.join(files)}")

    commit = model.push_to_hub(args.repo_id, model_card=card, private=args.private)
    print(f"pushed {args.repo_id} at commit {commit}")

    pinned = AffectFPN.from_pretrained(args.repo_id, revision=commit)
    x = torch.rand(2, 3, *model.config.input_size)
    with torch.inference_mode():
        same = all(
            (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
            for a, b in zip(model(x), pinned(x), strict=True)
        )
    print(f"loaded {args.repo_id}@{commit}: same outputs: {same}")
    print(f'pin it: AffectFPN.from_pretrained("{args.repo_id}", revision="{commit}")')
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
