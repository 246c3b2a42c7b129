"""Stage 1, the profile: YAML -> ``Profile`` -> validated, resolved, frozen ``BuildPlan``.

- ``load``: read a profile by path or built-in name, follow ``extends:``, apply ``--set``;
  every value keeps its file:line:col for error messages.
- ``schema``: every key, its type, default and check (the README's reference is made from it).
- ``resolve``: validation against the schema and the compatibility knowledge
  (``aibuild.knowledge``), then every decision: versions, base images, torch index,
  arch list, minimum driver.
- ``plan``: ``BuildPlan`` (the decisions) and ``RenderOptions`` (how a build site fetches).

Nothing here talks to the Docker engine.
"""
