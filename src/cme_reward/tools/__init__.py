"""Command-line tools over the library core: the `cme-reward` CLI, input readers, the resumable writer, the demo, the
token heatmap, offline assets and the reward server. Nothing in the core imports these except alias resolution
(`cme_reward.tools.assets`)."""

__all__: list[str] = []
