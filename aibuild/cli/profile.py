"""`aibuild profiles`, `aibuild check`, `aibuild render`: no Docker engine needed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

from aibuild.cli.options import (
    json_option,
    profile_argument,
    render_options,
    render_options_from,
    set_option,
)
from aibuild.profile.plan import RenderOptions


@click.command()
@json_option
def profiles(as_json: bool) -> None:
    """List the built-in profiles with one-line descriptions."""
    from aibuild.profile.load import builtin_profiles, load_profile

    rows = []
    for name in builtin_profiles():
        profile = load_profile(name)
        rows.append({"name": name, "description": str(profile.data.get("description") or "")})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        click.echo(f"{row['name']:<{width}}  {row['description']}")


@click.command()
@profile_argument
@set_option
@json_option
@click.option("--base-image", metavar="IMAGE", help="Check as if built FROM this image.")
def check(profile: str, overrides: tuple[str, ...], as_json: bool, base_image: str | None) -> None:
    """Validate PROFILE against the schema and the compatibility knowledge base.

    Prints every error and warning as FILE:LINE:COL: error: MESSAGE (key.path).
    Exit 0 when valid (warnings allowed), 1 when not.
    """
    from aibuild.errors import ProfileError
    from aibuild.profile.load import load_profile
    from aibuild.profile.resolve import validate

    options = RenderOptions(base_image=base_image)
    try:
        plan, diags = validate(load_profile(profile, overrides), options)
    except ProfileError as exc:  # could not even load it (YAML, extends, --set)
        plan, diags = None, exc.diagnostics
    errors = [d for d in diags if d.severity == "error"]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": plan is not None and not errors,
                    "errors": [d.to_dict() for d in errors],
                    "warnings": [d.to_dict() for d in diags if d.severity == "warning"],
                    "plan": plan.to_dict() if plan else None,
                },
                indent=2,
                sort_keys=True,
            )
        )
    else:
        for diag in diags:
            click.echo(diag.format(), err=True)
        if plan is not None and not errors:
            gpu = f"{plan.gpu} ({plan.compute_capability}), CUDA {plan.cuda}, " if plan.gpu else ""
            click.echo(
                f"{plan.profile_name}: valid: {gpu}torch {plan.torch} ({plan.torch_variant}), "
                f"Python {plan.python}, {plan.runtime_image} -> {plan.image_ref}"
            )
            if plan.gpu:  # where CUDA comes from, and why
                click.echo(f"  cuda: {plan.cuda_stack}")
            if plan.project:
                command = shlex.join(plan.project.command) or "aibuild train"
                click.echo(
                    f"  project: {plan.project.path} -> {plan.project.workdir}, "
                    f"{len(plan.project.requirements)} requirement(s), command: {command}"
                )
            if plan.dev_jupyter:
                click.echo(f"  dev image: {plan.dev_image_ref} (JupyterLab)")
    if errors or plan is None:
        raise click.exceptions.Exit(1)


@click.command()
@profile_argument
@set_option
@render_options
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    help="Write the whole build context (Dockerfile, profile, runtime, ...) to this directory.",
)
def render(profile: str, overrides: tuple[str, ...], output: str | None, **opts: Any) -> None:
    """Print PROFILE's Dockerfile, or write its whole build context with -o DIR."""
    from aibuild.image.render import render_dockerfile, write_context
    from aibuild.profile.resolve import plan_for

    options = render_options_from(**opts)
    plan = plan_for(profile, overrides, options)
    for warning in plan.warnings:
        click.echo(warning, err=True)
    if output:
        out = write_context(plan, Path(output), options)
        click.echo(f"wrote the build context for {plan.profile_name} to {out}", err=True)
    else:
        click.echo(render_dockerfile(plan, options), nl=False)
