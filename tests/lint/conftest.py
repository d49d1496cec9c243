"""The corpus holds snippets to be linted, never imported or collected."""

collect_ignore_glob = ["corpus/*"]
