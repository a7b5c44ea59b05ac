"""Building blocks every layer shares: errors, the plugin registry, atomic writes, SQLite files,
progress lines, the one image loader and optional-dependency checks. The bottom layer: it imports
nothing of geoguide's, so the reference maps, prompts, tools, agent and shells can all use it."""
